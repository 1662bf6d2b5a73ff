"""LiteRT (ai_edge_litert, falling back to tflite_runtime); XNNPACK unless the profile sets use_xnnpack = false."""

from __future__ import annotations

import numpy as np

from edgecxr.device.backends.base import Backend, BackendInfo


def _interpreter_cls():
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter

        return interpreter, "ai-edge-litert", getattr(ai_edge_litert, "__version__", "unknown")
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter

        return interpreter, "tflite-runtime", getattr(tflite_runtime, "__version__", "unknown")
    except ImportError:
        return None, "", ""


class LiteRTBackend(Backend):
    name = "litert"

    def load(self) -> None:
        from edgecxr.shared.errors import BundleError

        mod, self._pkg, self._ver = _interpreter_cls()
        if mod is None:
            raise BundleError("no LiteRT runtime: pip install ai-edge-litert (or tflite-runtime)")
        xnn = self.options.get("use_xnnpack", True)
        if not isinstance(xnn, bool):
            raise BundleError(f"option use_xnnpack must be true or false, not {xnn!r}", self.model_path)
        kw = {} if xnn else {"experimental_op_resolver_type": mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        try:
            self.interp = mod.Interpreter(model_path=str(self.model_path), num_threads=self.threads or None, **kw)
            self.interp.allocate_tensors()
        except Exception as e:
            raise self.fail("cannot load the .tflite model", e) from None
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self._batch = int(self._in["shape"][0])

    def _resize(self, n: int) -> None:
        if n != self._batch:
            shape = list(self._in["shape"])
            shape[0] = n
            self.interp.resize_tensor_input(self._in["index"], shape)
            self.interp.allocate_tensors()
            self._in = self.interp.get_input_details()[0]
            self._out = self.interp.get_output_details()[0]
            self._batch = n

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        self._resize(x.shape[0])
        self.interp.set_tensor(self._in["index"], x)
        self.interp.invoke()
        return self.interp.get_tensor(self._out["index"]).copy()

    def info(self) -> BackendInfo:
        ops = set()
        try:
            ops = {o["op_name"] for o in self.interp._get_ops_details()}
        except Exception:
            pass
        device = "XNNPACK delegate (CPU)" if "DELEGATE" in ops else "LiteRT builtin CPU kernels"
        return BackendInfo(self.name, self._pkg, self._ver, self.threads, device,
                           str(np.dtype(self._in["dtype"])), self.notes)
