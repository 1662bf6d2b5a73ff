"""PyTorch -> ONNX; int8 as QDQ in the form TensorRT's explicit quantisation accepts.

int8: ONNX Runtime static quantisation, QDQ format, symmetric int8 activations
and weights (zero point 0), per-channel weights, calibrated on the
calibration set; weights in 7 bits by default so that x86 CPUs without VNNI
do not saturate (recipes.py).  TensorRT builds an explicitly quantised engine from the Q/DQ
nodes; ONNX Runtime's CPU provider runs the same file elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from edgecxr.device.bundle import IOSpec
from edgecxr.host.export.base import Converted, spread
from edgecxr.host.export.recipes import Recipe, get_recipe


def convert(model: torch.nn.Module, size: int, channels: int, calib: list[np.ndarray] | None,
            precision: str, out_dir: Path, recipe: Recipe | None = None) -> Converted:
    import onnx
    import onnxruntime as ort

    fp32 = out_dir / ("model.onnx" if precision == "fp32" else ".fp32.onnx")
    example = torch.zeros(1, channels, size, size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(fp32), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          do_constant_folding=True, dynamo=False)
    versions = {"torch.onnx": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    details: dict = {"opset": 17}
    if precision == "int8":
        details.update(_quantize(fp32, list(calib or []), out_dir, recipe or get_recipe("onnxruntime")))
    m = onnx.load(str(out_dir / "model.onnx"))
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    details["ops"] = ops
    return Converted("model.onnx", ["model.onnx"], IOSpec("input", [1, channels, size, size], "NCHW", "float32"),
                     IOSpec("logits", [1, 2], "NC", "float32"), versions, details)


def _float_nodes(nodes, rp: dict) -> list[str]:
    """The nodes the recipe keeps float (``nodes_to_exclude``)."""
    exclude = []
    if rp.get("float_stem"):
        # the first convolutions (the stem and, in MobileNetV2, the first depthwise layer) stay float:
        # they see the image at full resolution, where int8 rounding of pixels and of 32 channels
        # costs most (benchmarks/quantization.md); TensorRT runs them in fp16 inside the int8 engine
        exclude += [n.name for n in nodes if n.op_type == "Conv"][:int(rp["float_stem"])]
    named = set(rp.get("float_nodes") or ())
    exclude += [n.name for n in nodes if n.name in named and n.name not in exclude]  # named exclusions
    if rp.get("float_classifier"):
        # the last Gemm (the classifier) and its logits stay float: TensorRT runs an unquantized
        # layer in fp16/fp32 inside an explicitly quantized engine
        exclude += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")][-1:]
    return exclude


def _quantize(fp32: Path, calib: list[np.ndarray], out_dir: Path, recipe: Recipe) -> dict:
    """``fp32`` (removed afterwards) -> ``out_dir/model.onnx`` in int8 QDQ per ``recipe``; the details
    for the manifest."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    details: dict = {}
    pre = out_dir / ".pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"input": x[None].astype(np.float32)} for x in calib])

        def get_next(self):
            return next(self._it, None)

    rp = recipe.params
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[rp.get("calibrate_method", "minmax")]
    # activations: "s8" (default) symmetric int8, zero point 0, TensorRT's explicit-quantization form;
    # "u8" asymmetric uint8, the form ONNX Runtime's CPU kernels (MLAS: u8 x s8) run fastest
    u8 = rp.get("activations", "s8") == "u8"
    fmt = QuantFormat.QOperator if rp.get("format", "qdq") == "qoperator" else QuantFormat.QDQ
    extra = {"ActivationSymmetric": not u8, "WeightSymmetric": True}
    if method == CalibrationMethod.Percentile:
        extra["CalibPercentile"] = float(rp.get("percentile", 99.999))
    pre_model = onnx.load(str(pre))  # read once: node names for exclusions, fp32 reference for bias correction
    exclude = _float_nodes(pre_model.graph.node, rp)
    cache = None
    if method == CalibrationMethod.Percentile and rp.get("streamed_calibration", True):
        # the same ranges as ONNX Runtime's own percentile calibration, in two batched passes
        # that never hold every activation (ort_calib.py); reused across targets in one process
        from edgecxr.host.export.ort_calib import percentile_ranges, write_cache

        ranges = percentile_ranges(pre, calib, extra["CalibPercentile"],
                                   symmetric=extra.get("CalibTensorRangeSymmetric", True))
        cache = write_cache(ranges, out_dir / ".calibration.json")
    quantize_static(str(pre), str(out_dir / "model.onnx"), None if cache else Reader(), quant_format=fmt,
                    nodes_to_exclude=exclude, calibration_cache_path=cache,
                    per_channel=True, reduce_range=bool(rp.get("reduce_range", True)),
                    activation_type=QuantType.QUInt8 if u8 else QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, extra_options=extra)
    if rp.get("bias_correction"):
        from edgecxr.host.export.qdq_bias import correct_biases

        q = onnx.load(str(out_dir / "model.onnx"))
        details["bias_correction"] = correct_biases(q, pre_model, spread(calib, int(rp["bias_correction"])))
        onnx.save(q, str(out_dir / "model.onnx"))
    fp32.unlink()
    pre.unlink()
    if cache:
        cache.unlink()
    for leftover in out_dir.glob("*.onnx.data"):
        leftover.unlink()
    details["quantization"] = f"{recipe.name}: {recipe.description}"
    details["recipe"] = recipe.to_dict()
    details["calibration_images"] = len(calib)
    if exclude:
        details["float_nodes"] = exclude
    return details
