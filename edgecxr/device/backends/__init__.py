"""Runtime backends behind one small interface (device side).

A backend loads one model file and maps a preprocessed float NCHW batch to
float logits.  Everything else (data, order, warm-up, timing, statistics,
records) belongs to the runner in ``edgecxr.device.bench``.  Adding a target is a new
``Backend`` subclass registered here plus a ``targets/*.toml`` file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgecxr.device.backends.base import Backend, BackendInfo

if TYPE_CHECKING:
    from edgecxr.device.bundle import Bundle

_REGISTRY = {
    "litert": ("edgecxr.device.backends.litert", "LiteRTBackend"),
    "openvino": ("edgecxr.device.backends.openvino", "OpenVINOBackend"),
    "onnxruntime": ("edgecxr.device.backends.onnxrt", "ONNXRuntimeBackend"),
    "torch": ("edgecxr.host.torchref", "TorchBackend"),  # host only
}


def backend_class(name: str) -> type[Backend]:
    from edgecxr.common.errors import BundleError

    if name not in _REGISTRY:
        raise BundleError(f"unknown backend {name!r} (known: {', '.join(_REGISTRY)})")
    mod, cls = _REGISTRY[name]
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
