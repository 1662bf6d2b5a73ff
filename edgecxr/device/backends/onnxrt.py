"""ONNX Runtime with the profile's execution providers (TensorRT, CUDA, CPU).

Providers that the installed runtime lacks are skipped, and the fallback is
reported in ``notes`` and in the result record: on a PC without a GPU the
Jetson bundle runs on the CPU provider, and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecxr.device.backends.base import Backend, BackendInfo


class ONNXRuntimeBackend(Backend):
    name = "onnxruntime"

    def load(self) -> None:
        from edgecxr.shared.errors import BundleError

        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("ONNX Runtime is not installed: pip install onnxruntime (onnxruntime-gpu on a Jetson)") from None
        self._ort = ort
        wanted = self.options.get("providers") or [{"name": "CPUExecutionProvider", "config": {}}]
        available = set(ort.get_available_providers())
        providers: list = []
        for p in wanted:
            name, cfg = (p, {}) if isinstance(p, str) else (p["name"], dict(p.get("config") or {}))
            if name not in available:
                self.notes.append(f"{name} not available in this onnxruntime build; skipped")
                continue
            if name == "TensorrtExecutionProvider" and "trt_engine_cache_path" in cfg:
                cache = Path(cfg["trt_engine_cache_path"])
                if not cache.is_absolute():
                    cache = self.model_path.parent.parent / f".trt_cache-{self.model_path.parent.name}"
                cache.mkdir(parents=True, exist_ok=True)
                cfg["trt_engine_cache_path"] = str(cache)
            providers.append((name, {k: str(v) if isinstance(v, bool) else v for k, v in cfg.items()}))
        if not providers:
            providers = [("CPUExecutionProvider", {})]
            self.notes.append("falling back to CPUExecutionProvider")
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.sess = ort.InferenceSession(str(self.model_path), sess_options=so, providers=providers)
        except Exception as e:
            raise self.fail("cannot load the ONNX model", e) from None
        self._in = self.sess.get_inputs()[0].name
        used = self.sess.get_providers()
        if wanted and used and used[0] != (wanted[0] if isinstance(wanted[0], str) else wanted[0]["name"]):
            self.notes.append(f"running on {used[0]} (first choice unavailable)")

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {self._in: x})[0]

    def info(self) -> BackendInfo:
        used = self.sess.get_providers()
        return BackendInfo(self.name, "onnxruntime", self._ort.__version__, self.threads,
                           used[0] if used else "unknown", self.options.get("_precision", "unknown"), self.notes)
