"""Bias correction of ONNX QDQ files (edgecxr/host/export/qdq_bias.py): the graph cut at each
corrected layer gives the corrections of running the whole int8 graph once per layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from .conftest import CALIB, TINY


@pytest.fixture(scope="module")
def qdq_pair(tmp_path_factory):
    """The tiny model as fp32 ONNX (pre-processed, as the converter hands it to bias correction) and
    as the int8 QDQ file of the ONNX default recipe without its bias correction; 32 calibration images."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.export.onnx import convert
    from edgecxr.host.export.recipes import Recipe, get_recipe
    from edgecxr.host.model import load_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

    out = tmp_path_factory.mktemp("qdq")
    model, meta = load_checkpoint(TINY)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    calib = [preprocess_grey(g, pp) for g in load_calibration_set(CALIB).greys]
    params = {k: v for k, v in get_recipe("onnxruntime").params.items() if k != "bias_correction"}
    convert(model, pp.size, pp.channels, calib, "int8", out, Recipe("no-bc", "onnxruntime", "test", params))
    (out / "fp").mkdir()
    convert(model, pp.size, pp.channels, None, "fp32", out / "fp")
    quant_pre_process(str(out / "fp" / "model.onnx"), str(out / "pre.onnx"), skip_symbolic_shape=True)
    return onnx.load(str(out / "model.onnx")), onnx.load(str(out / "pre.onnx")), calib


def _biases(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == 6}  # INT32


def test_segmented_correction_equals_the_whole_graph_per_layer(qdq_pair):
    """Identical int32 biases, the same summary, every corrected layer moved; and only biases changed.
    Batches of 10 (the last one short) check the cut graph's batching too."""
    batch = 10
    from edgecxr.host.export.qdq_bias import correct_biases, correct_biases_reference

    q0, pre, calib = qdq_pair
    fast, slow = copy.deepcopy(q0), copy.deepcopy(q0)
    a = correct_biases(fast, pre, calib, batch=batch)
    b = correct_biases_reference(slow, pre, calib, batch=batch)
    assert a == b and a["layers"] > 40 and a["images"] == len(calib) == 32
    before, got, want = _biases(q0), _biases(fast), _biases(slow)
    assert got.keys() == want.keys() == before.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    moved = [n for n in want if not np.array_equal(want[n], before[n])]
    assert len(moved) == a["layers"], (len(moved), a["layers"])  # every corrected layer's bias moved
    others = {i.name: i.SerializeToString() for i in q0.graph.initializer if i.name not in before}
    assert others == {i.name: i.SerializeToString() for i in fast.graph.initializer if i.name not in before}
    assert [n.SerializeToString() for n in fast.graph.node] == [n.SerializeToString() for n in q0.graph.node]


def test_uint8_activations_correct_each_layer_against_its_convolution(qdq_pair, tmp_path):
    """With asymmetric uint8 activations the quantizer drops the ReLU6 after a convolution and the
    convolution writes the Clip's tensor name: the fp32 reference of every corrected layer must still be
    that layer's own output (a Conv or Gemm in the fp32 model), not the activation after it; and the
    correction must then shrink the int8 graph's mean logit error against fp32 on its images."""
    import onnx
    import onnxruntime as ort

    from edgecxr.host.export.onnx import convert
    from edgecxr.host.export.qdq_bias import _layers, correct_biases
    from edgecxr.host.export.recipes import Recipe
    from edgecxr.host.model import load_checkpoint

    _, pre, calib = qdq_pair
    model, meta = load_checkpoint(TINY)
    convert(model, 64, 3, calib, "int8", tmp_path,
            Recipe("u8", "onnxruntime", "test", {"calibrate_method": "minmax", "reduce_range": True, "activations": "u8"}))
    q = onnx.load(str(tmp_path / "model.onnx"))
    assert not [n for n in q.graph.node if n.op_type == "Clip"]  # the form this test is about
    fp_op = {n.output[0]: n.op_type for n in pre.graph.node}
    layers = _layers(q, pre)
    assert len(layers) > 40 and all(fp_op[r] in ("Conv", "Gemm") for _, _, r, _, _ in layers)
    assert any(t != r for _, t, r, _, _ in layers)  # some layers write the dropped Clip's tensor
    x = np.stack(calib).astype(np.float32)

    def mean_logits(m) -> np.ndarray:
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"input": x})[0].mean(axis=0)

    ref = mean_logits(pre)
    raw = np.abs(mean_logits(q) - ref).max()
    correct_biases(q, pre, calib)
    assert np.abs(mean_logits(q) - ref).max() < 0.5 * raw
