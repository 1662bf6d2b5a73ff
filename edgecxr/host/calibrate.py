"""Calibration sets for post-training int8 quantisation.

``make_calibration_set`` picks a seeded, stratified sample from the *training*
part of a split (never validation or test) and copies the images, with a
manifest (relative path, label, sha256, source split, seed), under
``calibration/<name>/``.  ``load_calibration_set`` refuses a set that is empty,
single-class, unreadable, tampered, or overlaps the evaluation images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr import LABELS
from edgecxr.shared.data import NPZ_SEP, SplitManifest
from edgecxr.shared.errors import DataError, EdgeCXRError
from edgecxr.shared.fsutil import atomic_dir, sha256_file
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.intake import min_side

MANIFEST = "manifest.json"


def set_hash(shas: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()


def make_calibration_set(split_path: str | Path, out_dir: str | Path, name: str, n: int = 256,
                         seed: int = 0, force: bool = False) -> Path:
    split = SplitManifest.read(split_path)
    train = split.subset("train")
    if not train:
        raise DataError("split has no training images to calibrate from", split_path)
    if n < 2:
        raise DataError(f"calibration set size {n} is too small (at least 2, one per class)")
    # a training image whose pixels are also in the held-back parts (PneumoniaMNIST has such exact
    # duplicates across its official train and val parts) would put an evaluation image into the
    # calibration set, which load_calibration_set then refuses; leave those out here
    held = {it.sha256 for it in split.items if it.split != "train"}
    dups = sum(1 for it in train if it.sha256 in held)
    train = [it for it in train if it.sha256 not in held]
    rng = np.random.default_rng(seed)
    chosen = []
    for lab in (0, 1):
        grp = sorted((it for it in train if it.label == lab), key=lambda it: it.path)
        k = max(1, int(round(n * len(grp) / len(train))))
        k = min(k, len(grp))
        idx = sorted(rng.choice(len(grp), size=k, replace=False))
        chosen += [grp[i] for i in idx]
    final = Path(out_dir) / name
    if final.exists() and not force:
        raise EdgeCXRError("calibration set exists; use --force to replace it", final)
    items: list[dict[str, Any]] = []
    with atomic_dir(final, force=True) as tmp:
        for it in chosen:
            sub = Path("images") / LABELS[it.label]
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            if NPZ_SEP in it.path:
                from PIL import Image

                fname = it.path.replace(NPZ_SEP, "_").replace("/", "_") + ".png"
                g = split.load(it)
                Image.fromarray(np.round(g * 255).astype(np.uint8)).save(tmp / sub / fname)
            else:
                fname = Path(it.path).name
                shutil.copyfile(split.resolve(it), tmp / sub / fname)
            rel = (sub / fname).as_posix()
            items.append({"path": rel, "label": it.label, "sha256": sha256_file(tmp / rel),
                          "source_path": it.path, "source_sha256": it.sha256, "source_split": "train"})
        manifest = {
            "schema": 1, "name": name, "seed": seed, "n": len(items),
            # "npz": the images are a MedMNIST array's own size (28 px), by design, so the loader relaxes
            # the 64 px intake rule for them as the stress set's loader does; "folder": files as they came
            "source_kind": "npz" if any(NPZ_SEP in it.path for it in chosen) else "folder",
            "excluded_duplicates_of_held_back_images": dups,
            "counts": {LABELS[k]: sum(1 for i in items if i["label"] == k) for k in (0, 1)},
            "source": {"split_manifest": str(split_path), "split_sha256": sha256_file(split_path),
                       "part": "train", "split_seed": split.seed},
            "sha256": set_hash([i["sha256"] for i in items]),
            "items": items,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return final


@dataclass
class CalibrationSet:
    path: Path
    manifest: dict[str, Any]
    greys: list[np.ndarray]

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    def summary(self) -> dict[str, Any]:
        return {"name": self.manifest.get("name"), "path": str(self.path), "n": len(self.greys),
                "sha256": self.sha256, "seed": self.manifest.get("seed"), "counts": self.manifest.get("counts")}


def load_calibration_set(path: str | Path, forbid_sha256: set[str] | None = None) -> CalibrationSet:
    path = Path(path)
    mp = path / MANIFEST
    if not path.is_dir():
        raise DataError("calibration set folder not found", path)
    if not mp.exists():
        raise DataError(f"not a calibration set: no {MANIFEST} (make one with `edgecxr calibrate`)", path)
    try:
        m = json.loads(mp.read_text())
        items = m["items"]
    except Exception as e:
        raise DataError(f"calibration manifest is not valid ({e.__class__.__name__})", mp) from None
    if not items:
        raise DataError("calibration set is empty", path)
    labels = {int(i["label"]) for i in items}
    if labels != {0, 1}:
        raise DataError("calibration set has a single class; it must hold NORMAL and PNEUMONIA images", path)
    # made from an .npz (PneumoniaMNIST, 28 px): its images are as small as their source, by design
    from_npz = m.get("source_kind") == "npz" or all(NPZ_SEP in str(i.get("source_path", "")) for i in items)
    greys = []
    for it in items:
        f = path / it["path"]
        if not f.exists():
            raise DataError("calibration image missing", f)
        if sha256_file(f) != it["sha256"]:
            raise DataError("calibration image does not match its sha256 in the manifest", f)
        with min_side(1) if from_npz else contextlib.nullcontext():
            greys.append(load_grey(f))
    if forbid_sha256:
        shas = {it["sha256"] for it in items} | {it.get("source_sha256", "") for it in items}
        overlap = shas & forbid_sha256
        if overlap:
            raise DataError(f"calibration set overlaps the evaluation images ({len(overlap)} shared); "
                            "calibrate from the training split only", path)
    if set_hash([it["sha256"] for it in items]) != m.get("sha256"):
        raise DataError("calibration set hash does not match its manifest", path)
    return CalibrationSet(path, m, greys)
