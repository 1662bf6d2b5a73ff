"""LiteRT int8 files (edgecxr/host/export/litert.py): the integer arithmetic the file runs is the
arithmetic its PT2E calibration simulated (issue 26). Real tiny model, real LiteRT. That its bias
correction moves the file's mean logits onto fp32 is shown with the ONNX one in test_quant_gate.py."""

import json
from pathlib import Path

import numpy as np

_BIASED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _ops(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    td = {t["index"]: t for t in it.get_tensor_details()}
    return it._get_ops_details(), td


def test_every_int8_bias_is_stored_at_input_scale_times_weight_scale(bundles):
    """An int8 kernel adds the int32 bias to the sum of input x weight products, so the bias must be
    stored at input scale x weight scale. With the classifier's eval-mode Dropout left in the graph,
    litert-torch stored the FULLY_CONNECTED bias at the dropout's own scale (7.3x smaller on our
    models): the file applied the bias 7.3x too large and read every image higher than fp32."""
    b = bundles["rpi-int8"]
    m = json.loads((b / "manifest.json").read_text())
    assert m["conversion"]["dropout_removed"] == 1
    assert m["conversion"]["recipe"]["name"] == "pt2e-histogram-bc" and m["conversion"]["bias_correction"]["layers"] == 53
    ops, td = _ops(b / m["model_file"])
    checked = {}
    for op in ops:
        if op["op_name"] not in _BIASED or len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            continue
        x, w, bias = (td[i]["quantization_parameters"] for i in op["inputs"][:3])
        assert td[op["inputs"][2]]["dtype"] == np.int32, op
        want = x["scales"][0] * w["scales"]
        np.testing.assert_allclose(bias["scales"], want, rtol=1e-4, err_msg=f"{op['op_name']} {op['index']}")
        checked[op["op_name"]] = checked.get(op["op_name"], 0) + 1
    assert checked.get("FULLY_CONNECTED") == 1 and checked.get("CONV_2D", 0) > 20, checked
