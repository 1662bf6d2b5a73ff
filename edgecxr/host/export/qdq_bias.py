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

The int8 graph is not run whole once per layer. It is cut at each corrected layer: segment i
holds the nodes after layer i-1 up to layer i, plus layer i-1 itself again (with its corrected
bias) and the weight and activation DequantizeLinear nodes they read, and it starts from the
tensors earlier segments left (int8 where the cut falls after a QuantizeLinear). Each node runs
on the same inputs, with the same biases and in the same batches as it would in the whole graph,
so the corrections are those of running the whole graph once per layer
(``correct_biases_reference``, kept for the test that shows it) at a fraction of the cost: about
two passes over the images in all instead of one per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


def _session(model_bytes: bytes, as_graph: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if as_graph:  # Q/DQ computed as written (float arithmetic on the int8 grid), intermediate outputs kept
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _batch_sums(outs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per channel: the sum over the batch of each image's spatial mean (NCHW) or value (NC)."""
    return [o.astype(np.float64).sum(axis=(0, 2, 3)) / (o.shape[2] * o.shape[3]) if o.ndim == 4
            else o.astype(np.float64).sum(axis=0) for o in outs]


def _channel_means(model_bytes: bytes, taps: Sequence[str], images: Sequence[np.ndarray],
                   as_graph: bool, batch: int = 32) -> list[np.ndarray]:
    s = _session(model_bytes, as_graph)
    name = s.get_inputs()[0].name
    sums: list[np.ndarray] | None = None
    n = 0
    for i in range(0, len(images), batch):
        xb = np.stack(images[i:i + batch]).astype(np.float32)
        m = _batch_sums(s.run(list(taps), {name: xb}))
        sums = m if sums is None else [a + b for a, b in zip(sums, m, strict=True)]
        n += len(xb)
    return [a / n for a in sums or []]


def _layers(qdq, fp32) -> list[tuple[int, str, str, object, object]]:
    """(node index, its output tensor, the fp32 model's output tensor of the same layer, int32 bias
    initializer, bias scale initializer) of every convolution and Gemm whose bias is int8-quantized,
    in graph order.

    A layer is found in the fp32 model by its output tensor; where the fp32 model makes that tensor
    with another op, by node name: with asymmetric uint8 activations the quantizer drops a ReLU/Clip
    after a convolution (the QuantizeLinear range clips instead) and the convolution then writes the
    Clip's output tensor, which in the fp32 model holds the activation, not the convolution's output.
    (A layer whose output the quantizer renamed, the classifier Gemm before quantized logits, is not
    found and keeps its bias, as it always has.)"""
    g = qdq.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    fp_by_name = {n.name: n for n in fp32.graph.node if n.name}
    fp_by_output = {n.output[0]: n for n in fp32.graph.node if n.output}
    layers = []
    for k, n in enumerate(g.node):
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3:
            continue
        twin = fp_by_output.get(n.output[0])
        if twin is not None and twin.op_type != n.op_type:
            twin = fp_by_name.get(n.name) if n.name else None
        if twin is None or twin.op_type != n.op_type:
            continue
        dq = producer.get(n.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue  # a layer left in float (its bias is float too) needs no correction
        layers.append((k, n.output[0], twin.output[0], inits[dq.input[0]], inits[dq.input[1]]))
    return layers


def _correct(i: int, ref: np.ndarray, cur: np.ndarray, bq, bs) -> float:
    """Move layer i's int32 bias by the rounded mean shift; return the shift's mean size."""
    from onnx import numpy_helper

    bias = numpy_helper.to_array(bq).astype(np.int64)
    scale = numpy_helper.to_array(bs).astype(np.float64)
    step = np.round((ref - cur) / scale).astype(np.int64)
    new = np.clip(bias + step, -2**31, 2**31 - 1).astype(np.int32)
    bq.CopyFrom(numpy_helper.from_array(new, bq.name))
    return float(np.mean(np.abs(ref - cur)))


@dataclass
class _Segment:
    nodes: list[int]  # node indices, in graph order
    inputs: list[str]  # tensors it reads from earlier segments (or the graph input)
    tap: str
    keep: list[str] = field(default_factory=list)  # tensors it makes that later segments read


def _segments(g, positions: Sequence[int], taps: Sequence[str]) -> list[_Segment]:
    """Cut the graph at each corrected layer (see the module docstring)."""
    inits = {i.name for i in g.initializer}
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    const: set[int] = set()  # nodes that read only initializers (weight and bias DequantizeLinear)
    for k, n in enumerate(g.node):
        if all(t in inits or (t in producer and producer[t] in const) for t in n.input if t):
            const.add(k)
    segs: list[_Segment] = []
    start = 0
    for i, (p, tap) in enumerate(zip(positions, taps, strict=True)):
        nodes = {k for k in range(start, p + 1) if k not in const}
        if i:
            nodes.add(positions[i - 1])  # the previous layer again, with its corrected bias
        todo = list(nodes)
        inputs: set[str] = set()
        while todo:
            for t in g.node[todo.pop()].input:
                if not t or t in inits:
                    continue
                q = producer.get(t)
                if q is None:  # a graph input
                    inputs.add(t)
                elif q in nodes:
                    continue
                elif q in const or g.node[q].op_type == "DequantizeLinear":
                    nodes.add(q)  # recomputed here: the cut falls on its (int8) input instead
                    todo.append(q)
                else:
                    inputs.add(t)
        segs.append(_Segment(sorted(nodes), sorted(inputs), tap))
        start = p + 1
    for i, s in enumerate(segs):
        made = {o for k in s.nodes for o in g.node[k].output}
        later = {t for s2 in segs[i + 1:] for t in s2.inputs}
        s.keep = sorted(made & later)
    return segs


def _segment_model(model, seg: _Segment, arrays: dict[str, np.ndarray]) -> bytes:
    """A model of the segment's nodes, reading its inputs as graph inputs, with the current
    initializers (the biases corrected so far)."""
    import onnx

    g = model.graph
    nodes = [g.node[k] for k in seg.nodes]
    used = {t for n in nodes for t in n.input}
    inputs = [onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(arrays[t].dtype),
                                                 ["N", *arrays[t].shape[1:]]) for t in seg.inputs]
    outputs = [onnx.helper.make_empty_tensor_value_info(t) for t in dict.fromkeys([seg.tap, *seg.keep])]
    graph = onnx.helper.make_graph(nodes, "segment", inputs, outputs,
                                   initializer=[i for i in g.initializer if i.name in used])
    m = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    return m.SerializeToString()


def correct_biases(qdq, fp32, images: Sequence[np.ndarray],
                   log: Callable[[str], None] | None = None, batch: int = 32) -> dict:
    """Correct ``qdq`` (an onnx.ModelProto, changed in place) against ``fp32`` on ``images``
    (preprocessed C x H x W arrays). Returns what was done, for the manifest."""
    layers = _layers(qdq, fp32)
    if not layers or not images:
        return {"layers": 0, "images": len(images)}
    taps, ref_taps = [t for _, t, _, _, _ in layers], [r for _, _, r, _, _ in layers]
    ref = _channel_means(_with_outputs(fp32, ref_taps), ref_taps, images, as_graph=False, batch=batch)
    segs = _segments(qdq.graph, [k for k, _, _, _, _ in layers], taps)
    last_use = {t: i for i, s in enumerate(segs) for t in s.inputs}
    name = qdq.graph.input[0].name
    x = np.stack(images).astype(np.float32)
    arrays: dict[str, np.ndarray] = {name: x}
    shift_before = []
    for i, (seg, (_, _, _, bq, bs)) in enumerate(zip(segs, layers, strict=True)):
        s = _session(_segment_model(qdq, seg, arrays), as_graph=True)
        wanted = list(dict.fromkeys([seg.tap, *seg.keep]))
        sums: list[np.ndarray] | None = None
        kept: dict[str, list[np.ndarray]] = {t: [] for t in seg.keep}
        for j in range(0, len(x), batch):
            outs = dict(zip(wanted, s.run(wanted, {t: arrays[t][j:j + batch] for t in seg.inputs}), strict=True))
            m = _batch_sums([outs[seg.tap]])
            sums = m if sums is None else [a + b for a, b in zip(sums, m, strict=True)]
            for t in seg.keep:
                kept[t].append(outs[t])
        arrays.update({t: np.concatenate(v) for t, v in kept.items()})
        for t in [t for t in arrays if last_use.get(t, -1) <= i]:
            del arrays[t]  # read by no later segment
        shift_before.append(_correct(i, ref[i], (sums or [])[0] / len(x), bq, bs))
        if log and (i + 1) % 10 == 0:
            log(f"bias correction: {i + 1}/{len(layers)} layers")
    return {"layers": len(layers), "images": len(images),
            "mean_abs_shift_before": round(float(np.mean(shift_before)), 6)}


def correct_biases_reference(qdq, fp32, images: Sequence[np.ndarray], batch: int = 32) -> dict:
    """The same correction computed the slow, obvious way: the whole int8 graph run once per layer
    (one ONNX Runtime session each), with the layers before it corrected. Kept to check
    ``correct_biases`` against (tests/test_qdq_bias.py)."""
    layers = _layers(qdq, fp32)
    if not layers or not images:
        return {"layers": 0, "images": len(images)}
    ref_taps = [r for _, _, r, _, _ in layers]
    ref = _channel_means(_with_outputs(fp32, ref_taps), ref_taps, images, as_graph=False, batch=batch)
    shift_before = []
    for i, (_, tap, _, bq, bs) in enumerate(layers):
        cur = _channel_means(_with_outputs(qdq, [tap]), [tap], images, as_graph=True, batch=batch)[0]
        shift_before.append(_correct(i, ref[i], cur, bq, bs))
    return {"layers": len(layers), "images": len(images),
            "mean_abs_shift_before": round(float(np.mean(shift_before)), 6)}
