"""Gate and report on real results; the gate fails on a deliberately damaged model."""

import json

import numpy as np
import pytest

from edgecxr.device.bench import BenchConfig, run, store, subject_from_bundle
from edgecxr.device.bundle import file_table, write_manifest

from .conftest import MINI, ROOT, assert_clean_error, run_cli


def test_gate_passes_fp32_and_reports(bundles, tmp_path):
    summary = tmp_path / "gate.md"
    p = run_cli("gate", bundles["rpi-fp32"], bundles["nuc-fp32"], bundles["jetson-fp32"], "--data", MINI,
                "--summary", summary)
    assert p.returncode == 0, p.stdout + p.stderr
    text = summary.read_text()
    assert text.count("PASS") == 3 and "FAIL" not in text


def test_gate_int8_with_limits(bundles, tmp_path):
    ints = [bundles[f"{t}-int8"] for t in ("rpi", "nuc", "jetson")]
    p = run_cli("gate", *ints, "--data", MINI, "--max-auc-drop", "0.05", "--min-agreement", "0.9")
    assert p.returncode == 0, p.stdout + p.stderr
    # impossible limits fail every int8 bundle, with a readable reason
    p = run_cli("gate", *ints, "--data", MINI, "--max-auc-drop", "-1", "--summary", tmp_path / "g.md")
    assert p.returncode == 1
    assert (tmp_path / "g.md").read_text().count("FAIL") == 3


def test_gate_fails_on_damaged_model(bundle_copy, tmp_path):
    """An int8 artifact whose weights were damaged (as a broken converter would) must not pass,
    even though its manifest checksums are consistent."""
    import onnx
    from onnx import numpy_helper

    b = bundle_copy("jetson-int8")
    m = onnx.load(str(b / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.int8 and a.ndim == 4:
            init.CopyFrom(numpy_helper.from_array(rng.integers(-127, 128, a.shape).astype(np.int8), init.name))
    onnx.save(m, str(b / "model.onnx"))
    man = json.loads((b / "manifest.json").read_text())
    man["files"] = file_table(b, list(man["files"]))
    write_manifest(b, man)
    summary = tmp_path / "gate.md"
    p = run_cli("gate", b, "--data", MINI, "--summary", summary)
    assert_clean_error(p, "gate failed")
    assert p.returncode == 1
    assert "FAIL" in summary.read_text() and "agreement" in summary.read_text()


def test_report(bundles, tmp_path):
    results = tmp_path / "results"
    for k in ("rpi-int8", "rpi-fp32", "nuc-int8", "nuc-fp32"):
        store(run(subject_from_bundle(bundles[k]), MINI, BenchConfig(iterations=5, warmup=1), device="box-a"), results)
    store(run(subject_from_bundle(bundles["jetson-int8"]), MINI, BenchConfig(iterations=5, warmup=1), device="box-b"),
          results)
    out = tmp_path / "RESULTS.md"
    p = run_cli("report", "--results", results, "--out", out)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert "## box-a" in text and "## box-b" in text
    for name in ("rpi4-int8", "rpi4-fp32", "nuc-int8", "nuc-fp32", "jetson-orin-nano-int8"):
        assert f"| {name} |" in text
    # one ratio per int8 bundle against its own fp32 twin, none for the jetson bundle (no twin on box-b)
    assert "rpi4 (litert): int8/fp32 p50 latency" in text and "nuc (openvino): int8/fp32 p50 latency" in text
    assert "jetson-orin-nano (onnxruntime): int8/fp32" not in text
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["box-a-latency-size.png", "box-a-roc.png", "box-b-latency-size.png", "box-b-roc.png"]
    assert all((tmp_path / "plots" / n).stat().st_size > 5000 for n in pngs)
    assert_clean_error(run_cli("report", "--results", tmp_path / "none", "--out", tmp_path / "R.md"), "no benchmark")


@pytest.mark.parametrize("cmd", ["data", "train", "evaluate", "targets", "calibrate", "export", "bench", "report",
                                 "gate", "verify", "unpack", "predict", "explain"])
def test_every_command_has_help(cmd):
    p = run_cli(cmd, "--help")
    assert p.returncode == 0 and "Usage" in p.stdout
    if cmd not in ("data",):
        assert "Example" in p.stdout


def test_targets_listing():
    p = run_cli("targets")
    assert p.returncode == 0
    for name in ("rpi4", "rpi5", "nuc", "jetson-orin-nano"):
        assert name in p.stdout


def test_report_puts_the_int8_heatmap_table_beside_the_auc_drop(tmp_path):
    """RESULTS.md carries explain.md's int8-vs-fp32 heatmap table when one sits beside it."""
    from edgecxr.device.report import report

    out = tmp_path / "RESULTS.md"
    report(ROOT / "benchmarks" / "results", out)
    assert "Where int8 looks" not in out.read_text()
    table = "| int8 bundle | fp32 twin | images | r median |\n|---|---|---:|---:|\n| nuc-int8 | nuc-fp32 | 60 | 0.999 |"
    (tmp_path / "explain.md").write_text(f"# x\n\n## Did int8 change where the model looks?\n\ntext\n\n{table}\n\nafter\n")
    report(ROOT / "benchmarks" / "results", out)
    text = out.read_text()
    assert "## Where int8 looks" in text and table in text and "after" not in text.split("Where int8 looks")[1]
