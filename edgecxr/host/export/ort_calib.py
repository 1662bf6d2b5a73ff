"""Percentile calibration for ONNX Runtime static quantization, streamed and exact.

ONNX Runtime's ``PercentileCalibrater`` runs the calibration images one at a time with every
calibrated tensor as a graph output, keeps all of them (about 53 MB per 224 px image for
MobileNetV2: 13 GB for 256 images), then stacks, flattens and histograms them in one go. That was
134 of the 151 s of an ONNX int8 export (issue 28).

This module computes the same histograms without holding the activations:

1. one batched pass through a copy of the graph that outputs, per calibrated tensor, only its
   min and max and the min and max of its absolute value (``ReduceMin``/``ReduceMax`` nodes:
   exact, no rounding);
2. one batched pass through ONNX Runtime's own augmented graph (``create_calibrator``), each
   batch's tensors binned with ``np.histogram`` over the global range from pass 1 and the counts
   summed.

``np.histogram`` places a value by its own arithmetic against the edges ``linspace(lo, hi, bins + 1)``;
with the same ``lo`` and ``hi`` as ONNX Runtime's one call over everything, each value falls in the
same bin, so the summed counts, the percentile thresholds and the quantized file are identical
(``tests/test_quant_gate.py`` checks the file byte for byte against ``quantize_static``'s own
calibration). The percentile step itself is ONNX Runtime's (``HistogramCollector``); the ranges go
back into ``quantize_static`` through its public ``calibration_cache_path``.

The histograms depend only on the float graph and the images, not on the quantized form (the
Jetson's symmetric file and the CPU profiles' uint8 file calibrate the same tensors), so they are
kept for the rest of the process, keyed by the graph's and the images' sha256.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

_MEMO: dict[tuple, object] = {}  # (graph sha256, images sha256, settings) -> TensorsData


def _images_sha(images: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for x in images:
        a = np.ascontiguousarray(x, np.float32)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _reductions(model_path: Path, tensors: list[str], out_path: Path) -> list[str]:
    """A copy of the graph whose outputs are min, max, min |x| and max |x| of each tensor."""
    import onnx
    from onnx import helper

    m = onnx.load(str(model_path))
    del m.graph.output[:]
    outs = []
    for i, t in enumerate(tensors):
        a = f"_edgecxr_abs_{i}"
        m.graph.node.append(helper.make_node("Abs", [t], [a], name=f"_edgecxr_abs_node_{i}"))
        for op, src, tag in (("ReduceMin", t, "min"), ("ReduceMax", t, "max"), ("ReduceMin", a, "amin"),
                             ("ReduceMax", a, "amax")):
            o = f"_edgecxr_{tag}_{i}"
            m.graph.node.append(helper.make_node(op, [src], [o], name=f"{o}_node", keepdims=0))
            m.graph.output.append(helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, []))
            outs.append(o)
    onnx.save(m, str(out_path))
    return outs


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ONNX Runtime's calibrator
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def percentile_ranges(model_path: str | Path, images: list[np.ndarray], percentile: float,
                      symmetric: bool = True, num_bins: int = 2048, batch: int = 16):
    """``TensorsData`` as ``quantize_static(calibrate_method=Percentile)`` computes it for ``model_path``
    (the pre-processed float graph) on ``images`` (C x H x W float32 each), one batch at a time."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        HistogramCollector,
        TensorsData,
        create_calibrator,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    model_path = Path(model_path)
    if not images:
        raise ValueError("no calibration images")
    g = hashlib.sha256(model_path.read_bytes())
    for extern in sorted(model_path.parent.glob(model_path.name + "*.data")):  # weights kept outside the graph
        g.update(extern.read_bytes())
    key = (g.hexdigest(), _images_sha(images), float(percentile),
           bool(symmetric), int(num_bins))
    if key in _MEMO:
        return _MEMO[key]
    x = np.stack([np.asarray(i, np.float32) for i in images])
    batches = [x[i:i + batch] for i in range(0, len(x), batch)]
    ops = list(set(list(QLinearOpsRegistry.keys()) + list(QDQRegistry.keys())))  # as quantize_static
    with tempfile.TemporaryDirectory(prefix="edgecxr-calib-") as td:
        cal = create_calibrator(model_path, ops, augmented_model_path=str(Path(td) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.Percentile,
                                extra_options={"percentile": float(percentile), "symmetric": bool(symmetric),
                                               "num_bins": int(num_bins)})
        inputs = [i.name for i in cal.infer_session.get_inputs()]
        if len(inputs) != 1:
            raise ValueError(f"expected one graph input, got {inputs}")
        names = sorted(cal.tensors_to_calibrate)
        # pass 1: global extremes, in the graph
        red = _reductions(model_path, names, Path(td) / "reductions.onnx")
        rs = _session(Path(td) / "reductions.onnx")
        ext = None
        for b in batches:
            v = np.array(rs.run(red, {inputs[0]: b}), dtype=np.float32).reshape(len(names), 4)
            ext = v if ext is None else np.stack([np.minimum(ext[:, 0], v[:, 0]), np.maximum(ext[:, 1], v[:, 1]),
                                                  np.minimum(ext[:, 2], v[:, 2]), np.maximum(ext[:, 3], v[:, 3])], 1)
        del rs
        if not np.all(np.isfinite(ext)):
            raise ValueError("calibration activations are not finite")
        # pass 2: the histograms, batch by batch, over the global range
        out_names = [o.name for o in cal.infer_session.get_outputs()]
        want = [n for n in out_names if n in cal.tensors_to_calibrate]
        row = {n: i for i, n in enumerate(names)}
        hist = {n: np.zeros(num_bins, np.int64) for n in want}
        edges = {}
        for n in want:
            mn, mx, amn, amx = (np.float32(v) for v in ext[row[n]])
            if symmetric:  # HistogramCollector.collect_absolute_value: |x| over [min |x|, max |x|]
                lo, hi = amn, amx
            else:  # collect_value: x over [-t, t], t = max(|min|, |max|)
                t = np.array(max(abs(mn), abs(mx)), dtype=np.float32)
                lo, hi = -t, t
            edges[n] = (lo, hi, mn, mx)
        for b in batches:
            outs = cal.infer_session.run(want, {inputs[0]: b})
            for n, o in zip(want, outs, strict=True):
                lo, hi = edges[n][:2]
                v = np.absolute(o.ravel()) if symmetric else o.ravel()
                hist[n] += np.histogram(v, bins=num_bins, range=(lo, hi))[0]
        del cal
    collector = HistogramCollector(method="percentile", symmetric=bool(symmetric), num_bins=int(num_bins),
                                   num_quantized_bins=128, percentile=float(percentile), scenario="same")
    for n in want:
        lo, hi, mn, mx = edges[n]
        _, e = np.histogram(np.array([], np.float32), bins=num_bins, range=(lo, hi))
        collector.histogram_dict[n] = ((hist[n], e.astype(np.float32), mn, mx) if symmetric
                                       else (hist[n], e, mn, mx, hi))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # ONNX Runtime prints progress lines
        td_ = TensorsData(CalibrationMethod.Percentile, collector.compute_collection_result())
    _MEMO[key] = td_
    return td_


def write_cache(tensors_data, path: str | Path) -> Path:
    """The ranges in the file ``quantize_static(calibration_cache_path=...)`` reads."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    save_tensors_data(tensors_data, path)
    return Path(path)
