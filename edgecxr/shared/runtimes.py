"""The runtime registry: one entry per inference runtime, read by targets, export and bench.

For each runtime: the device-side backend class, the host-side converter module, the pip extra a
board installs, the model file suffix of its bundles and the profile options it accepts. Modules
are named, not imported, so this file stays importable on a board without torch or the converters.
Adding a runtime is one entry here, a backend in ``edgecxr/device/backends/`` and a converter in
``edgecxr/host/export/`` (plus a ``targets/*.toml`` profile that uses it).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecxr.shared.errors import EdgeCXRError


@dataclass(frozen=True)
class Runtime:
    name: str
    backend: str  # "module:Class" of the device-side backend
    converter: str | None  # host-side converter module (None: not exportable, e.g. the float reference)
    extra: str | None  # pip extra that installs it on a board: pip install 'edgecxr[<extra>]'
    suffix: str  # the model file's suffix inside a bundle
    options: tuple[str, ...]  # keys a target profile's [options] table may set
    device_side: bool = True  # False: host only (needs torch)

    def backend_ref(self) -> tuple[str, str]:
        mod, _, cls = self.backend.partition(":")
        return mod, cls


RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("litert", "edgecxr.device.backends.litert:LiteRTBackend", "edgecxr.host.export.litert", "rpi",
            ".tflite", ("use_xnnpack",)),
    Runtime("openvino", "edgecxr.device.backends.openvino:OpenVINOBackend", "edgecxr.host.export.openvino", "nuc",
            ".xml", ("device", "performance_hint", "inference_precision")),
    Runtime("onnxruntime", "edgecxr.device.backends.onnxrt:ONNXRuntimeBackend", "edgecxr.host.export.onnx", "jetson",
            ".onnx", ("providers",)),
    Runtime("torch", "edgecxr.host.torchref:TorchBackend", None, "train", ".pt", (), device_side=False),
)}


def get_runtime(name: str, where: object = None) -> Runtime:
    try:
        return RUNTIMES[name]
    except (KeyError, TypeError):
        raise EdgeCXRError(f"unknown backend {name!r} (known: {', '.join(RUNTIMES)})", where) from None


def exportable() -> list[str]:
    return [n for n, r in RUNTIMES.items() if r.converter]
