"""Deployment bundles: a model file plus ``manifest.json`` (device side).

The bundle is the contract between host and board.  The manifest holds
everything the board needs to reproduce the host's numbers: preprocessing,
input/output layout, dtypes and quantisation, labels, the operating threshold,
the float model's reference results per image (keyed by image sha256), and the
sha256 of every file.  ``verify`` refuses a tampered, truncated or mismatched
bundle before anything is loaded.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.device.signing import SIGNATURE
from edgecxr.shared.errors import BundleError
from edgecxr.shared.fsutil import atomic_write_bytes, sha256_file, write_tar
from edgecxr.shared.preprocess import PreprocessConfig
from edgecxr.shared.runtimes import RUNTIMES

SCHEMA = 1
KIND = "edgecxr-bundle"
MANIFEST = "manifest.json"
REQUIRED = ("schema", "kind", "target", "backend", "precision", "model_file", "input", "output",
            "preprocess", "labels", "threshold", "files")


@dataclass
class IOSpec:
    name: str
    shape: list[int]
    layout: str  # "NCHW" | "NHWC" | "NC"
    dtype: str  # "float32" | "int8" | "uint8"
    scale: float | None = None
    zero_point: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IOSpec:
        q = d.get("quant") or {}
        return cls(d.get("name", ""), list(d["shape"]), d["layout"], d["dtype"], q.get("scale"), q.get("zero_point"))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": self.shape, "layout": self.layout, "dtype": self.dtype}
        if self.scale is not None:
            d["quant"] = {"scale": self.scale, "zero_point": self.zero_point}
        return d

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8") and self.scale is not None

    def encode(self, x_nchw: np.ndarray) -> np.ndarray:
        """Preprocessed float NCHW batch -> this input's layout and dtype."""
        x = x_nchw
        if self.layout == "NHWC":
            x = np.transpose(x, (0, 2, 3, 1))
        if self.quantized:
            info = np.iinfo(self.dtype)
            x = np.clip(np.round(x / self.scale) + self.zero_point, info.min, info.max).astype(self.dtype)
        else:
            x = x.astype(np.float32)
        return np.ascontiguousarray(x)

    def decode(self, y: np.ndarray) -> np.ndarray:
        """Raw output -> float logits."""
        if self.quantized:
            return (y.astype(np.float32) - self.zero_point) * self.scale
        return y.astype(np.float32)


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    trust: Any = None  # edgecxr.signing.Trust after verify()

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def input(self) -> IOSpec:
        return IOSpec.from_dict(self.manifest["input"])

    @property
    def output(self) -> IOSpec:
        return IOSpec.from_dict(self.manifest["output"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def name(self) -> str:
        return f"{self.manifest['target']}-{self.manifest['precision']}"

    def model_bytes(self) -> int:
        return sum(int(f["bytes"]) for n, f in self.manifest["files"].items())

    def reference(self) -> dict[str, dict[str, Any]]:
        return (self.manifest.get("reference") or {}).get("images") or {}


def file_table(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size} for n in sorted(names)}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    from edgecxr.shared.fsutil import to_jsonable

    atomic_write_bytes(folder / MANIFEST, (json.dumps(to_jsonable(manifest), indent=1) + "\n").encode())


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    mpath = path / MANIFEST if path.is_dir() else path
    if not path.exists():
        raise BundleError("bundle not found", path)
    if not mpath.exists():
        raise BundleError(f"not a bundle: no {MANIFEST}", path)
    try:
        m = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{MANIFEST} is not valid JSON ({e.__class__.__name__})", path) from None
    if not isinstance(m, dict):
        raise BundleError(f"{MANIFEST} is not a JSON object", path)
    return m


def verify(path: str | Path, *, keys: list[str | Path] | None = None, expect: str | None = None,
           trust: bool = True) -> Bundle:
    """Check schema and every file's sha256; return the bundle or raise BundleError.

    With ``trust`` (the default) the signature policy of :mod:`edgecxr.signing` follows: a bundle
    pinned by ``expect`` must have that digest, and where trusted keys are configured (``keys``, else
    $EDGECXR_TRUSTED_KEYS or the user's trusted_keys file) it must carry a valid signature by one of
    them.  The result is in ``Bundle.trust``.  ``trust=False`` is for the exporter's own checks.
    """
    path = Path(path)
    if path.is_file() and tarfile.is_tarfile(path):
        raise BundleError("this is a bundle archive; unpack it first (edgecxr unpack) or pass the folder", path)
    m = read_manifest(path)
    if m.get("kind") != KIND:
        raise BundleError(f"{MANIFEST} is not an edgecxr bundle manifest", path)
    if m.get("schema") != SCHEMA:
        raise BundleError(f"bundle schema {m.get('schema')} is not supported (this edgecxr reads {SCHEMA})", path)
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise BundleError(f"manifest lacks {', '.join(missing)}", path)
    from edgecxr.device.manifest_check import check_fields

    check_fields(m, path)
    files = m["files"]
    if m["model_file"] not in files:
        raise BundleError(f"model file {m['model_file']} is not listed in the manifest's files", path)
    rt = RUNTIMES.get(m["backend"]) if isinstance(m["backend"], str) else None
    if rt is None or not rt.device_side:
        raise BundleError(f"manifest names backend {m['backend']!r}; a bundle runs on one of: "
                          f"{', '.join(n for n, r in RUNTIMES.items() if r.device_side)}", path)
    if not str(m["model_file"]).endswith(rt.suffix):
        raise BundleError(f"model file {m['model_file']} does not fit backend {rt.name} (expects *{rt.suffix})", path)
    on_disk = {p.name for p in path.iterdir() if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
               and not p.name.startswith(".")}
    extra = on_disk - set(files)
    if extra:
        raise BundleError(f"unexpected file(s) not in the manifest: {', '.join(sorted(extra))}", path)
    for name, rec in files.items():
        f = path / name
        if "/" in name or name.startswith(".."):
            raise BundleError(f"bad file name in manifest: {name}", path)
        if not f.exists():
            raise BundleError(f"missing file {name}", path)
        size = f.stat().st_size
        if size != int(rec["bytes"]):
            raise BundleError(f"{name} is {size} bytes, manifest says {rec['bytes']} (truncated or replaced)", path)
        if sha256_file(f) != rec["sha256"]:
            raise BundleError(f"{name} sha256 does not match the manifest (tampered or corrupt)", path)
    try:
        IOSpec.from_dict(m["input"])
        IOSpec.from_dict(m["output"])
        PreprocessConfig.from_dict(m["preprocess"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"manifest input/output/preprocess record is malformed ({e})", path) from None
    from edgecxr.shared.intake import check_intensity_record

    check_intensity_record(m["preprocess"], path)
    b = Bundle(path, m)
    if trust:
        from edgecxr.device.signing import enforce

        b.trust = enforce(path, files, keys, expect)
    return b


def pack(folder: str | Path, archive: str | Path | None = None) -> Path:
    """One .tar of the bundle folder (deterministic order), written atomically."""
    folder = Path(folder)
    archive = Path(archive) if archive else folder.with_suffix(".tar")
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return write_tar([(f"{folder.name}/{p.name}", p) for p in files], archive)


def unpack(archive: str | Path, dest_parent: str | Path, force: bool = False) -> Bundle:
    """Unpack a bundle archive, verify it in a temp folder, then move it into place."""
    from edgecxr.shared.fsutil import atomic_dir

    archive = Path(archive)
    if not archive.exists():
        raise BundleError("archive not found", archive)
    try:
        tar = tarfile.open(archive, "r")
    except (tarfile.TarError, OSError) as e:
        raise BundleError(f"not a readable bundle archive ({e.__class__.__name__})", archive) from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BundleError(f"archive is truncated or corrupt ({e.__class__.__name__})", archive) from None
        tops = {m.name.split("/")[0] for m in members}
        if len(tops) != 1:
            raise BundleError("archive must hold exactly one bundle folder", archive)
        top = tops.pop()
        if top in ("", ".", "..") or os.sep in top:
            raise BundleError("bad folder name in archive", archive)
        final = Path(dest_parent) / top
        if final.exists() and not force:
            raise BundleError("a bundle of that name is already installed; use --force to replace it", final)
        with atomic_dir(final, force=True) as tmp:
            for mem in members:
                if not mem.isfile():
                    continue
                name = mem.name.split("/", 1)[-1]
                if not name or "/" in name or name.startswith(".") or len(name.encode()) > 200:
                    raise BundleError(f"unexpected path in archive: {mem.name[:120]}", archive)
                src = tar.extractfile(mem)
                if src is None:
                    raise BundleError(f"cannot read {mem.name}", archive)
                try:
                    data = src.read()
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise BundleError(f"archive is truncated or corrupt ({e.__class__.__name__})", archive) from None
                try:
                    (tmp / name).write_bytes(data)
                except OSError as e:
                    raise BundleError(f"cannot write {name[:60]} from the archive ({e.strerror})", archive) from None
            try:
                verify(tmp)
            except BundleError as e:  # name the archive, not the temp folder it was checked in
                raise BundleError(e.message, archive) from None
    return verify(final)
