"""Runtime backends behind one small interface (device side).

A backend loads one model file and maps a preprocessed float NCHW batch to
float logits.  Everything else (data, order, warm-up, timing, statistics,
records) belongs to the runner in ``edgecxr.device.bench``.  Adding a target is a new
``Backend`` subclass named in the runtime registry (``edgecxr.shared.runtimes``)
plus a converter and a ``targets/*.toml`` file.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING

from edgecxr.device.backends.base import Backend, BackendInfo

if TYPE_CHECKING:
    from edgecxr.device.bundle import Bundle

def backend_class(name: str) -> type[Backend]:
    """The backend class the runtime registry (:mod:`edgecxr.shared.runtimes`) names for ``name``."""
    from edgecxr.shared.errors import BundleError
    from edgecxr.shared.runtimes import RUNTIMES

    if name not in RUNTIMES:
        raise BundleError(f"unknown backend {name!r} (known: {', '.join(RUNTIMES)})")
    mod, cls = RUNTIMES[name].backend_ref()
    return getattr(importlib.import_module(mod), cls)


def open_backend(bundle: Bundle, threads: int | None = None, options: dict | None = None) -> Backend:
    """Create and load the backend a verified bundle asks for."""
    cls = backend_class(bundle.manifest["backend"])
    opts = dict((bundle.manifest.get("target_profile") or {}).get("options") or {})
    opts.update(options or {})
    opts["_precision"] = bundle.manifest["precision"]
    b = cls(bundle.model_path, bundle.input, bundle.output, threads=threads, options=opts)
    b.load()
    # what decides this backend's outputs: the model file, the runtime, its options and thread count
    mf = (bundle.manifest.get("files") or {}).get(bundle.manifest.get("model_file")) or {}
    b.identity = (mf.get("sha256"), bundle.manifest["backend"], json.dumps(opts, sort_keys=True, default=str),
                  threads) if mf.get("sha256") else None
    return b


def infer_all(backend: Backend, x, images_key: tuple | None = None, bs: int = 16):
    """Logits of ``backend`` for every image of ``x`` (N x C x H x W), ``bs`` at a time. With
    ``images_key`` (what names the images and their preprocessing, e.g. their sha256s), inside
    ``edgecxr.shared.data.image_memo`` the same model, runtime, options, threads and batch size run
    once per run on the same images: the export check, bench and gate of ``edgecxr demo`` share them."""
    import numpy as np

    def make():
        return np.concatenate([backend.infer(x[i:i + bs]) for i in range(0, len(x), bs)])

    ident = getattr(backend, "identity", None)
    if ident is None or images_key is None:
        return make()
    from edgecxr.shared.data import memoised

    return memoised(("logits", ident, bs, images_key), make)


__all__ = ["Backend", "BackendInfo", "backend_class", "infer_all", "open_backend"]
