"""Empirical bias correction for ONNX QDQ models, layer by layer (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019, section 4.2).

Int8 rounding of weights and activations shifts the mean of every layer's output, and the shift
adds up through the network. NNCF corrects it for OpenVINO (``fast_bias_correction=False``);
ONNX Runtime's quantizer has no such step, so this module does it on the QDQ file it wrote: for
each convolution or Gemm in graph order, the mean per output channel of the int8 graph (run in
float arithmetic, ONNX Runtime with graph optimizations off) is compared with the fp32 model's on
the calibration images, and the layer's int32 bias absorbs the difference, after the layers
before it were corrected. Only the biases change: the file keeps the Q/DQ form TensorRT's
explicit quantization reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _with_outputs(model, taps: Sequence[str]) -> bytes:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in taps:
        if t not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    return m.SerializeToString()


def _channel_means(model_bytes: bytes, taps: Sequence[str], images: Sequence[np.ndarray],
                   as_graph: bool, batch: int = 32) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if as_graph:  # Q/DQ computed as written (float arithmetic on the int8 grid), intermediate outputs kept
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    sums: list[np.ndarray] | None = None
    n = 0
    for i in range(0, len(images), batch):
        xb = np.stack(images[i:i + batch]).astype(np.float32)
        outs = s.run(list(taps), {name: xb})
        m = [o.astype(np.float64).sum(axis=(0, 2, 3)) / (o.shape[2] * o.shape[3]) if o.ndim == 4
             else o.astype(np.float64).sum(axis=0) for o in outs]
        sums = m if sums is None else [a + b for a, b in zip(sums, m, strict=True)]
        n += len(xb)
    return [a / n for a in sums or []]


def correct_biases(qdq, fp32, images: Sequence[np.ndarray],
                   log: Callable[[str], None] | None = None) -> dict:
    """Correct ``qdq`` (an onnx.ModelProto, changed in place) against ``fp32`` on ``images``
    (preprocessed C x H x W arrays). Returns what was done, for the manifest."""
    from onnx import numpy_helper

    g = qdq.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    fp_tensors = {o for n in fp32.graph.node for o in n.output}
    layers = []
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.output[0] not in fp_tensors:
            continue
        dq = producer.get(n.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue  # a layer left in float (its bias is float too) needs no correction
        layers.append((n.output[0], inits[dq.input[0]], inits[dq.input[1]]))
    if not layers or not images:
        return {"layers": 0, "images": len(images)}
    taps = [t for t, _, _ in layers]
    ref = _channel_means(_with_outputs(fp32, taps), taps, images, as_graph=False)
    shift_before = []
    for i, (tap, bq, bs) in enumerate(layers):
        cur = _channel_means(_with_outputs(qdq, [tap]), [tap], images, as_graph=True)[0]
        bias = numpy_helper.to_array(bq).astype(np.int64)
        scale = numpy_helper.to_array(bs).astype(np.float64)
        step = np.round((ref[i] - cur) / scale).astype(np.int64)
        new = np.clip(bias + step, -2**31, 2**31 - 1).astype(np.int32)
        bq.CopyFrom(numpy_helper.from_array(new, bq.name))
        shift_before.append(float(np.mean(np.abs(ref[i] - cur))))
        if log and (i + 1) % 10 == 0:
            log(f"bias correction: {i + 1}/{len(layers)} layers")
    return {"layers": len(layers), "images": len(images),
            "mean_abs_shift_before": round(float(np.mean(shift_before)), 6)}
