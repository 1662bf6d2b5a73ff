"""The board side of ``edgecxr agent``: installs pushed bundles and runs bench/predict for the host.

``make_agent(port, store, data, device)`` returns an :class:`~edgecxr.device.link.agent.Agent` with
the board service wired in.  The store holds::

    store/incoming/          transfers land here first (the agent's staging, sha256-checked)
    store/bundles/<name>/    installed bundles: a pushed .tar is unpacked and verified in a
                             temp folder, and only then moved into place
    store/images/<name>      pushed image files (and .npz files)
    store/images/<stem>/     pushed image archives (``meta.kind == "images"``), unpacked
    store/results/           a copy of every bench record run here (<device>.jsonl)

Pushed files say what they are in ``meta.kind``: ``bundle`` (the default for ``.tar``),
``images`` (a ``.tar`` of a labelled folder) or ``image`` (the default otherwise).

Ops (besides the agent's built-ins): ``bundles``, ``bench``, ``predict``; ``info`` also
carries the device name, :func:`edgecxr.shared.sysinfo.device_facts` and the installed bundles.
Device side: no torch; the runtimes are imported only when an op needs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from edgecxr.device.link.agent import Agent
from edgecxr.device.link.errors import TransferError
from edgecxr.device.link.files import check_name
from edgecxr.device.link.transport import BytePort, LinkConfig
from edgecxr.shared.errors import BundleError, DataError, EdgeCXRError
from edgecxr.shared.fsutil import sha256_file

log = logging.getLogger("edgecxr.device.link")

Progress = Callable[[dict[str, Any]], None]

FILE_KINDS = ("bundle", "images", "image")
DEFAULT_BAUD = 921600


def file_kind(name: str, meta: dict[str, Any] | None = None) -> str:
    """What a pushed file is: ``meta["kind"]`` if given, else ``bundle`` for a .tar and ``image`` otherwise."""
    kind = (meta or {}).get("kind")
    if kind is None:
        return "bundle" if name.endswith(".tar") else "image"
    if kind not in FILE_KINDS:
        raise TransferError(f"unknown kind {kind!r} (expected one of {', '.join(FILE_KINDS)})")
    return str(kind)


class BoardService:
    """What the agent does on a board, independent of the link (the ops are plain methods)."""

    def __init__(self, store: str | os.PathLike[str], data: str | os.PathLike[str] | None = None,
                 device: str | None = None):
        self.store = Path(store)
        self.bundles_dir = self.store / "bundles"
        self.images_dir = self.store / "images"
        self.results_dir = self.store / "results"
        self.data = Path(data) if data is not None else None
        self._device = device

    @property
    def device(self) -> str:
        if self._device:
            return self._device
        from edgecxr.shared.sysinfo import default_device_name

        return default_device_name()

    # ------------------------------------------------------------------ received files
    def on_file_received(self, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
        """Install a verified transfer (hook of :class:`Agent`); raise to reject it."""
        kind = file_kind(path.name, meta.get("meta"))
        try:
            if kind == "bundle":
                return self.install_bundle(path, meta.get("sha256"))
            if kind == "images":
                return self.install_image_archive(path)
            return self.install_image(path)
        finally:
            path.unlink(missing_ok=True)  # installed (copied out) or rejected: nothing stays in incoming/

    def install_bundle(self, archive: Path, archive_sha256: str | None = None) -> dict[str, Any]:
        """Unpack, verify, then replace: a corrupt or partial archive never touches an installed bundle."""
        from edgecxr.device import bundle

        try:
            b = bundle.unpack(archive, self.bundles_dir, force=True)
        except BundleError as exc:
            installed = self._top_name(archive)
            keep = (f"; the installed {installed} is unchanged"
                    if installed and (self.bundles_dir / installed / bundle.MANIFEST).is_file() else "")
            raise BundleError(f"{exc.message}{keep}") from None
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise BundleError(f"not a readable bundle archive ({type(exc).__name__}: {first})") from None
        man = b.manifest
        entry = {"installed": b.path.name, "bundle": b.name, "target": man["target"], "backend": man["backend"],
                 "precision": man["precision"], "manifest_sha256": sha256_file(b.path / bundle.MANIFEST)}
        if archive_sha256:
            entry["sha256"] = archive_sha256
        log.info("installed bundle %s (%s, %s)", b.path.name, man["backend"], man["precision"])
        return entry

    @staticmethod
    def _top_name(archive: Path) -> str | None:
        try:
            with tarfile.open(archive, "r") as tar:
                tops = {m.name.split("/")[0] for m in tar.getmembers()}
        except (tarfile.TarError, EOFError, OSError):
            return None
        return tops.pop() if len(tops) == 1 else None

    def install_image(self, path: Path) -> dict[str, Any]:
        self.images_dir.mkdir(parents=True, exist_ok=True)
        dest = self.images_dir / check_name(path.name)
        if dest.is_dir():
            raise TransferError(f"images/{dest.name} is an image folder here; push the file under another name")
        os.replace(path, dest)
        return {"installed": f"images/{dest.name}", "image": dest.name}

    def install_image_archive(self, archive: Path) -> dict[str, Any]:
        """Unpack a .tar of a labelled folder (NORMAL/, PNEUMONIA/) into ``images/<stem>/``."""
        from edgecxr.shared.fsutil import atomic_dir

        name = check_name(archive.name[:-4] if archive.name.endswith(".tar") else archive.name + ".d")
        final = self.images_dir / name
        n = 0
        try:
            with tarfile.open(archive, "r") as tar, atomic_dir(final, force=True) as tmp:
                for mem in tar.getmembers():
                    if mem.isdir():
                        continue
                    rel = PurePosixPath(mem.name)
                    if (not mem.isfile() or rel.is_absolute() or ".." in rel.parts
                            or any(p.startswith(".") for p in rel.parts)):
                        raise DataError(f"unexpected entry in image archive: {mem.name}")
                    src = tar.extractfile(mem)
                    if src is None:
                        raise DataError(f"cannot read {mem.name} in the image archive")
                    dest = tmp.joinpath(*rel.parts)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with src, open(dest, "wb") as f:
                        shutil.copyfileobj(src, f)
                    n += 1
                if n == 0:
                    raise DataError("the image archive is empty")
        except (tarfile.TarError, EOFError, OSError) as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise DataError(f"not a readable image archive ({type(exc).__name__}: {first})") from None
        return {"installed": f"images/{name}", "images": name, "files": n}

    # ------------------------------------------------------------------ bundles
    def list_bundles(self) -> list[dict[str, Any]]:
        from edgecxr.device.bundle import MANIFEST, read_manifest

        out: list[dict[str, Any]] = []
        if not self.bundles_dir.is_dir():
            return out
        for d in sorted(self.bundles_dir.iterdir()):
            if not d.is_dir() or d.name.startswith(".") or not (d / MANIFEST).is_file():
                continue
            try:
                m = read_manifest(d)
                out.append({"name": d.name, "bundle": f"{m.get('target')}-{m.get('precision')}",
                            "target": m.get("target"), "backend": m.get("backend"), "precision": m.get("precision"),
                            "manifest_sha256": sha256_file(d / MANIFEST),
                            "model_bytes": sum(int(f.get("bytes", 0)) for f in (m.get("files") or {}).values())})
            except (EdgeCXRError, OSError, TypeError, ValueError, AttributeError) as exc:
                out.append({"name": d.name, "error": str(exc)})
        return out

    def bundle_path(self, name: Any) -> Path:
        """An installed bundle by folder name (or by ``<target>-<precision>``)."""
        if not isinstance(name, str) or not name:
            raise EdgeCXRError("params.bundle (the name of an installed bundle) is required")
        check_name(name)
        p = self.bundles_dir / name
        if (p / "manifest.json").is_file():
            return p
        listed = self.list_bundles()
        for e in listed:
            if e.get("bundle") == name:
                return self.bundles_dir / e["name"]
        have = ", ".join(e["name"] for e in listed) or "none"
        raise BundleError(f"no bundle '{name}' on this board (installed: {have}); push it with edgecxr remote push")

    def op_bundles(self, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        return {"bundles": self.list_bundles()}

    # ------------------------------------------------------------------ bench
    def data_path(self, images: Any) -> Path | None:
        """The data for bench: a pushed image folder/.npz, else the board's ``--data``, else None (the hint)."""
        if images is None:
            return self.data
        if not isinstance(images, str):
            raise DataError("params.images must be the name of a pushed image folder or .npz")
        p = self.images_dir / check_name(images)
        if not p.exists():
            raise DataError(f"no pushed images named '{images}' on this board (push them with remote bench --images)")
        return p

    def op_bench(self, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from edgecxr.device.bench import BenchConfig, run, store, subject_from_bundle

        cfg = BenchConfig(
            warmup=_int(params, "warmup", 10, 0), iterations=_int(params, "iterations", 100, 1),
            time_budget_s=_float(params, "time_budget_s", 0.0), batch=_int(params, "batch", 1, 1),
            extra_batch=_int(params, "extra_batch", 0, 0), threads=_int(params, "threads", None, 1),
            max_images=_int(params, "max_images", 0, 0), accuracy=bool(params.get("accuracy", True)),
            latency=bool(params.get("latency", True)), options=_dict(params, "options"))
        path = self.bundle_path(params.get("bundle"))
        data = self.data_path(params.get("images"))
        progress({"stage": "verifying", "bundle": path.name})
        subject = subject_from_bundle(path)
        progress({"stage": "benchmarking", "bundle": path.name, "device": self.device,
                  "data": str(data) if data is not None else "the bundle's reference images",
                  "iterations": cfg.iterations, "warmup": cfg.warmup})
        try:
            record = run(subject, data, cfg, self.device, log=lambda msg: progress({"stage": "log", "message": str(msg)}))
        except DataError as exc:
            if data is None:
                raise DataError(f"{exc}; start the agent with --data DIR or push images with remote bench --images DIR"
                                ) from None
            raise
        with contextlib.suppress(OSError):  # a copy stays on the board in case the reply is lost
            store(record, self.results_dir)
        return record

    # ------------------------------------------------------------------ predict
    def op_predict(self, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        from edgecxr.device.predict import predict

        path = self.bundle_path(params.get("bundle"))
        names = params.get("images")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError("params.images must be a non-empty list of names of pushed image files")
        files = []
        for n in names:
            f = self.images_dir / check_name(n)
            if not f.is_file():
                raise DataError(f"no pushed image named '{n}' on this board (push it first)")
            files.append(f)
        if params.get("explain"):  # heatmaps too: written under the store, pulled by the host with `get`
            from edgecxr.device.explain import explain_on_board

            progress({"stage": "explaining", "bundle": path.name, "images": len(files)})
            rows = explain_on_board(path, files, self.store, params["explain"], _int(params, "threads", None, 1))
        else:
            progress({"stage": "predicting", "bundle": path.name, "images": len(files)})
            rows = predict(path, files, _int(params, "threads", None, 1))
        for name, row in zip(names, rows, strict=True):
            row["file"] = name
        return {"bundle": path.name, "predictions": rows}

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        from edgecxr.shared.sysinfo import device_facts

        return {"device": self.device, "device_facts": device_facts(), "bundles": self.list_bundles(),
                "data": str(self.data) if self.data is not None else None}


def make_agent(port: BytePort | str | os.PathLike[str], store: str | os.PathLike[str],
               data: str | os.PathLike[str] | None = None, device: str | None = None,
               config: LinkConfig | None = None, *, baud: int = DEFAULT_BAUD, **agent_kwargs: Any) -> Agent:
    """An :class:`Agent` serving a board: bundle installs, ``bundles``, ``bench``, ``predict``, extended ``info``.

    ``port`` is a port object or a device path/URL (opened at ``baud``).  ``data`` is the board's
    labelled image folder used by ``bench`` when the host names no pushed images.
    """
    if data is not None and not Path(data).exists():
        raise DataError("data folder not found", data)
    service = BoardService(store, data, device)
    agent = Agent(port, store, {"bundles": service.op_bundles, "bench": service.op_bench,
                                "predict": service.op_predict},
                  on_file_received=service.on_file_received, config=config, baud=baud, info_extra=service.info,
                  **agent_kwargs)
    agent.service = service  # type: ignore[attr-defined]
    return agent


def _int(params: dict[str, Any], key: str, default: int | None, minimum: int) -> Any:
    v = params.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise EdgeCXRError(f"params.{key} must be an integer >= {minimum}, got {v!r}")
    return v


def _float(params: dict[str, Any], key: str, default: float) -> float:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise EdgeCXRError(f"params.{key} must be a number >= 0, got {v!r}")
    return float(v)


def _dict(params: dict[str, Any], key: str) -> dict[str, Any]:
    v = params.get(key) or {}
    if not isinstance(v, dict):
        raise EdgeCXRError(f"params.{key} must be an object")
    return v
