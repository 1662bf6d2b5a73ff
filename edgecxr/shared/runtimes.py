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


def options_help() -> str:
    """Each runtime's option keys, for ``--option``'s help."""
    return "; ".join(f"{n}: {', '.join(r.options)}" for n, r in RUNTIMES.items() if r.options)


def parse_options(pairs: list[str] | None) -> dict:
    """``--option KEY=VALUE`` pairs: VALUE is read as JSON where it parses (``false``, ``4``,
    ``["CPU"]``), else kept as text (``bf16``)."""
    import json

    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EdgeCXRError(f"bad --option {pair!r}: use KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def check_options(options: dict, backends: list[str]) -> None:
    """Every key must be one that at least one of ``backends`` reads (the profile options of its
    runtime); a subject then gets only the keys its own runtime reads (``options_for``)."""
    readers = {b: get_runtime(b).options for b in dict.fromkeys(backends)}
    for key in options:
        if not any(key in keys for keys in readers.values()):
            known = "; ".join(f"{b}: {', '.join(keys) or 'none'}" for b, keys in readers.items())
            raise EdgeCXRError(f"--option {key}: no runtime of these subjects reads it ({known})")


def options_for(backend: str, options: dict) -> dict:
    keys = get_runtime(backend).options
    return {k: v for k, v in options.items() if k in keys}
