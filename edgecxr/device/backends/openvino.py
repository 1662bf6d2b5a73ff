"""OpenVINO (CPU plugin by default); fp32 is pinned to f32 unless told otherwise."""

from __future__ import annotations

import numpy as np

from edgecxr.device.backends.base import Backend, BackendInfo


class OpenVINOBackend(Backend):
    name = "openvino"

    def load(self) -> None:
        from edgecxr.shared.errors import BundleError

        try:
            import openvino as ov
        except ImportError:
            raise BundleError("OpenVINO is not installed: pip install openvino") from None
        self._ov = ov
        self.core = ov.Core()
        device = self.options.get("device", "CPU")
        cfg: dict[str, str] = {}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = str(self.threads)
        if self.options.get("performance_hint"):
            cfg["PERFORMANCE_HINT"] = str(self.options["performance_hint"])
        prec = self.options.get("inference_precision")
        if prec:
            cfg["INFERENCE_PRECISION_HINT"] = str(prec)
        try:
            model = self.core.read_model(str(self.model_path))
            # dynamic batch so the runner may use batch > 1
            shp = model.inputs[0].get_partial_shape()
            shp[0] = ov.Dimension(-1)
            model.reshape({model.inputs[0]: shp})
            self.compiled = self.core.compile_model(model, device, cfg)
            self.req = self.compiled.create_infer_request()
        except Exception as e:
            raise self.fail("cannot load/compile the OpenVINO IR", e) from None
        self._device = device

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        try:
            res = self.req.infer({0: x}, share_inputs=True)
        except RuntimeError as e:
            # e.g. an int8 IR on an arm64 core the ARM plugin lacks kernels for (Cortex-A72: a layer
            # "is not initialized"); OpenVINO's message ends with the reason
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise self.fail("cannot run the model on this CPU", RuntimeError(lines[-1] if lines else "")) from None
        return np.asarray(next(iter(res.values())))

    def info(self) -> BackendInfo:
        try:
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            prec = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        except Exception:
            prec = "unknown"
        try:
            threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        except Exception:
            threads = self.threads
        try:
            dev_name = self.core.get_property(self._device, "FULL_DEVICE_NAME")
        except Exception:
            dev_name = self._device
        return BackendInfo(self.name, "openvino", self._ov.__version__, threads,
                           f"{self._device} plugin ({dev_name})", prec, self.notes)
