"""Export the real tiny model to all three targets in both precisions and run every bundle
in its real runtime (LiteRT via ai-edge-litert, OpenVINO CPU, ONNX Runtime CPU for the Jetson)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecxr.device.backends import open_backend
from edgecxr.device.bundle import verify
from edgecxr.host.export import float_logits, run_backend
from edgecxr.host.model import load_checkpoint
from edgecxr.shared.data import load_eval_set
from edgecxr.shared.metrics import softmax_pos
from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

from .conftest import CALIB, MINI, TARGETS, TINY, assert_clean_error, run_cli


@pytest.fixture(scope="module")
def reference():
    model, meta = load_checkpoint(TINY)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    items, greys, _ = load_eval_set(MINI)
    x = np.stack([preprocess_grey(g, pp) for g in greys])
    return x, softmax_pos(float_logits(model, x)), np.array([it.label for it in items]), meta


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_bundle_runs_and_agrees_with_float(bundles, reference, target, precision):
    x, p_float, y, meta = reference
    b = verify(bundles[f"{target}-{precision}"])
    m = b.manifest
    assert m["precision"] == precision and m["threshold"] == pytest.approx(meta["threshold"])
    assert m["source"]["checkpoint_sha256"] == meta["sha256"]
    assert len(m["reference"]["images"]) == len(y) == 64
    assert set(m["export_check"]) >= {"auc_float", "auc_artifact", "auc_drop", "label_agreement",
                                      "mean_abs_prob_diff", "max_abs_prob_diff"}
    p = softmax_pos(run_backend(open_backend(b, threads=2), x))
    diff = np.abs(p - p_float)
    if precision == "fp32":
        assert diff.max() < 1e-3
    else:
        assert m["calibration"]["n"] == 32
        assert diff.mean() < 0.05
        assert np.mean((p >= m["threshold"]) == (p_float >= m["threshold"])) >= 0.9
    if target == "rpi" and precision == "int8":
        assert m["input"]["dtype"] == "int8" and m["input"]["layout"] == "NHWC" and m["input"]["quant"]["scale"] > 0
        assert m["output"]["dtype"] == "int8"
    if target == "jetson" and precision == "int8":
        import onnx

        g = onnx.load(str(b.model_path)).graph
        assert any(n.op_type == "QuantizeLinear" for n in g.node)
        zps = [onnx.numpy_helper.to_array(i) for i in g.initializer if i.name.endswith("zero_point")]
        assert zps and all(np.all(z == 0) for z in zps)  # symmetric, TensorRT-ready
        assert {z.dtype for z in zps} <= {np.dtype(np.int8), np.dtype(np.int32)}  # int32 only for biases
        assert sum(z.dtype == np.int8 for z in zps) > 10
        provs = m["target_profile"]["options"]["providers"]
        assert [q["name"] for q in provs][0] == "TensorrtExecutionProvider"
    # the archive unpacks to an identical, verified bundle
    assert b.path.with_suffix(".tar").exists()


@pytest.mark.parametrize("target", TARGETS)
def test_int8_is_smaller(bundles, target):
    i8 = verify(bundles[f"{target}-int8"]).model_bytes()
    f32 = verify(bundles[f"{target}-fp32"]).model_bytes()
    assert i8 < 0.55 * f32  # tiny models carry fixed overhead; the 224px model is checked in benchmarks/


def test_litert_int8_is_full_integer(bundles):
    """Every op of the LiteRT int8 model runs in int8: no float islands behind DEQUANTIZE/QUANTIZE
    (litert-torch leaves MobileNetV2's chained residual adds in float unless they are annotated)."""
    import json

    from ai_edge_litert.interpreter import Interpreter

    b = bundles["rpi-int8"]
    m = json.loads((b / "manifest.json").read_text())
    ops = m["conversion"]["ops"]
    assert ops.get("ADD", 0) == 10 and "DEQUANTIZE" not in ops and "QUANTIZE" not in ops, ops
    it = Interpreter(model_path=str(b / m["model_file"]))
    it.allocate_tensors()
    floats = [d["name"] for d in it.get_tensor_details()
              if np.dtype(d["dtype"]) == np.float32 and len(d["shape"]) == 4]
    assert not floats, f"float activations in the int8 model: {floats[:5]}"


def test_archive_roundtrip(bundles, tmp_path):
    from edgecxr.device.bundle import unpack

    b = unpack(bundles["rpi-int8"].with_suffix(".tar"), tmp_path)
    assert json.loads((b.path / "manifest.json").read_text()) == verify(bundles["rpi-int8"]).manifest


def test_bad_inputs_are_clear_and_write_nothing(bundles, tmp_path):
    out = tmp_path / "dist"
    assert_clean_error(run_cli("export", TINY, "--target", "pi9", "--data", MINI, "--out", out),
                       "unknown target", "rpi4", "nuc", "jetson-orin-nano")
    assert_clean_error(run_cli("export", tmp_path / "missing.pt", "--target", "rpi", "--data", MINI, "--out", out),
                       "not found")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(TINY.read_bytes()[:5000])
    assert_clean_error(run_cli("export", corrupt, "--target", "nuc", "--data", MINI, "--out", out), str(corrupt))
    assert not out.exists() or not any(out.iterdir())
    # an existing bundle is not replaced without --force
    existing = bundles["nuc-fp32"]
    before = (existing / "manifest.json").read_bytes()
    assert_clean_error(run_cli("export", TINY, "--target", "nuc", "--precision", "fp32", "--data", MINI,
                               "--out", existing.parent), "--force")
    assert (existing / "manifest.json").read_bytes() == before


def test_converter_noise_goes_to_a_log_kept_only_on_failure(tmp_path, monkeypatch, capfd):
    """Converters print from C++ and Python; the user sees one line, and the log when it failed."""
    import os
    import warnings

    import edgecxr.host.export.openvino as ov_conv
    from edgecxr.host.export import export_bundle
    from edgecxr.shared.errors import EdgeCXRError

    def noisy_then_broken(*args, **kwargs):
        os.write(2, b"C++ NOISE from the converter\n")
        warnings.warn("python noise from the converter", RuntimeWarning, stacklevel=1)
        raise RuntimeError("unsupported op: aten::frobnicate")

    monkeypatch.setattr(ov_conv, "convert", noisy_then_broken)
    out = tmp_path / "dist"
    with pytest.raises(EdgeCXRError) as err:
        export_bundle(TINY, "nuc", "fp32", out, data=MINI, log=lambda *_: None)
    msg = str(err.value)
    assert "openvino converter failed" in msg and "aten::frobnicate" in msg and "\n" not in msg
    log = Path(msg.split("converter log: ")[1])
    assert "C++ NOISE" in log.read_text()
    log.unlink()
    assert "NOISE" not in capfd.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_calibration_set_checks(tmp_path):
    out = tmp_path / "dist"
    # a calibration set that overlaps the evaluation images is refused
    overlap = tmp_path / "overlap"
    shutil.copytree(CALIB, overlap)
    assert_clean_error(run_cli("export", TINY, "--target", "nuc", "--precision", "int8", "--data", overlap / "images",
                               "--calibration", overlap, "--out", out), "overlaps")
    # single-class
    single = tmp_path / "single"
    shutil.copytree(CALIB, single)
    m = json.loads((single / "manifest.json").read_text())
    m["items"] = [i for i in m["items"] if i["label"] == 1]
    (single / "manifest.json").write_text(json.dumps(m))
    assert_clean_error(run_cli("export", TINY, "--target", "nuc", "--precision", "int8", "--data", MINI,
                               "--calibration", single, "--out", out), "single class")
    # unreadable image
    broken = tmp_path / "broken"
    shutil.copytree(CALIB, broken)
    victim = broken / json.loads((broken / "manifest.json").read_text())["items"][0]["path"]
    victim.write_bytes(b"garbage")
    assert_clean_error(run_cli("export", TINY, "--target", "nuc", "--precision", "int8", "--data", MINI,
                               "--calibration", broken, "--out", out), victim.name)
    # empty / missing
    assert_clean_error(run_cli("export", TINY, "--target", "nuc", "--precision", "int8", "--data", MINI,
                               "--calibration", tmp_path / "nope", "--out", out), "not found")
    assert not out.exists() or not any(p for p in out.iterdir() if not p.name.startswith("."))


def test_calibrate_command(tmp_path):
    from edgecxr.host.calibrate import load_calibration_set

    split = tmp_path / "s.json"
    assert run_cli("data", "split", MINI, "--out", split).returncode == 0
    p = run_cli("calibrate", "--split", split, "--n", "10", "--name", "c", "--out-dir", tmp_path / "cal")
    assert p.returncode == 0, p.stderr
    cs = load_calibration_set(tmp_path / "cal" / "c")
    m = cs.manifest
    assert m["n"] == 10 and m["counts"]["NORMAL"] >= 1 and m["counts"]["PNEUMONIA"] >= 1
    val = {json.loads(split.read_text())["items"][i]["sha256"] for i in range(64)
           if json.loads(split.read_text())["items"][i]["split"] == "val"}
    assert not {i["sha256"] for i in m["items"]} & val  # drawn from the training part only
