"""Runtime backends behind one small interface (device side).

A backend loads one model file and maps a preprocessed float NCHW batch to
float logits.  Everything else (data, order, warm-up, timing, statistics,
records) belongs to the runner in ``edgecxr.device.bench``.  Adding a target is a new
``Backend`` subclass named in the runtime registry (``edgecxr.shared.runtimes``)
plus a converter and a ``targets/*.toml`` file.
"""

from __future__ import annotations

import importlib
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
    return b


__all__ = ["Backend", "BackendInfo", "backend_class", "open_backend"]
