"""LiteRT int8 files (edgecxr/host/export/litert.py): the integer arithmetic the file runs is the
arithmetic its PT2E calibration simulated, and the optional bias correction moves the int8 file's
mean logits onto the fp32 model's (issue 26). Real tiny model, real LiteRT, real calibration images."""

import json
from pathlib import Path

import numpy as np

from .conftest import CALIB, MINI, TINY, run_cli

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


def test_pt2e_bias_correction_moves_the_mean_logits_onto_fp32(tmp_path):
    """On the images it was fitted on, the corrected int8 file's mean logits (as LiteRT runs it) are
    closer to fp32's than those of the same recipe without the correction, and every convolution and
    the classifier were corrected."""
    from edgecxr.device.backends import infer_all, open_backend
    from edgecxr.device.bundle import verify
    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

    for q in ("pt2e-histogram", "pt2e-histogram-bc"):
        p = run_cli("export", TINY, "--target", "rpi", "--precision", "int8", "--quant", q, "--data", MINI,
                    "--calibration", CALIB, "--out", tmp_path / q)
        assert p.returncode == 0, p.stderr
    p = run_cli("export", TINY, "--target", "rpi", "--precision", "fp32", "--data", MINI,
                "--calibration", CALIB, "--out", tmp_path / "fp32")
    assert p.returncode == 0, p.stderr
    pp = PreprocessConfig.from_dict(read_checkpoint(TINY)["preprocess"])
    x = np.stack([preprocess_grey(g, pp) for g in load_calibration_set(CALIB).greys])

    def mean_logits(folder: Path) -> np.ndarray:
        return infer_all(open_backend(verify(next(folder.glob("*/manifest.json")).parent), threads=2), x).mean(axis=0)

    ref = mean_logits(tmp_path / "fp32")
    raw = np.abs(mean_logits(tmp_path / "pt2e-histogram") - ref).max()
    fixed = np.abs(mean_logits(tmp_path / "pt2e-histogram-bc") - ref).max()
    m = json.loads(next((tmp_path / "pt2e-histogram-bc").glob("*/manifest.json")).read_text())
    bc = m["conversion"]["bias_correction"]
    assert bc["images"] == len(x) and bc["layers"] == 53, bc  # 52 convolutions and the classifier
    assert fixed < 0.5 * raw, (fixed, raw)
