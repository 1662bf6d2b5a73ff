"""The compute floor (edgecxr/device/floor.py) and each bundle's p50 against it in the report."""

from __future__ import annotations

import json

from .conftest import MINI, run_cli


def test_floor_is_measured_without_the_openblas_overrides(monkeypatch):
    from edgecxr.device.floor import INT8_PER_FP32, floor_ms, measure

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Prescott")  # a slow kernel, if it reached the child
    monkeypatch.setenv("OPENBLAS_L2_SIZE", "65536")
    f = measure(1, "avx2", sizes=(256,), reps=2)
    assert f is not None and f["sgemm_gflops"] > 0.5, f
    assert f["env"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None, "OPENBLAS_NUM_THREADS": "1"}
    assert abs(f["int8_gops"] - f["sgemm_gflops"] * INT8_PER_FP32["avx2"]) < 0.02  # both rounded to 0.01
    assert abs(floor_ms(2e9, f, "fp32") - 2e3 / f["sgemm_gflops"]) < 1e-6
    assert floor_ms(2e9, f, "int8") < floor_ms(2e9, f, "fp32")
    assert floor_ms(None, f, "int8") is None and floor_ms(1e9, None, "fp32") is None


def test_report_shows_each_bundles_p50_against_the_floor(bundles, tmp_path):
    """Export counts the model's FLOPs into the manifest; bench --floor records the floor; report divides."""
    m = json.loads((bundles["nuc-int8"] / "manifest.json").read_text())
    assert m["compute"]["flops"] == 2 * m["compute"]["macs"] > 1e6
    results = tmp_path / "results"
    p = run_cli("bench", bundles["nuc-int8"], bundles["nuc-fp32"], "--data", MINI, "--iterations", "5", "--warmup",
                "1", "--results", results, "--device", "here", "--floor")
    assert p.returncode == 0, p.stderr
    recs = [json.loads(x) for x in (results / "here.jsonl").read_text().splitlines()]
    assert all(r["compute_floor"]["sgemm_gflops"] > 0 and r["subject"]["flops"] == m["compute"]["flops"] for r in recs)
    out = tmp_path / "RESULTS.md"
    assert run_cli("report", "--results", results, "--out", out).returncode == 0
    text = out.read_text()
    assert "compute floor" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| nuc-") and ln.endswith("x |")]
    assert len(rows) == 2, text
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        floor, p50, ratio = float(cells[4]), float(cells[5]), float(cells[6][:-1])
        assert floor > 0 and abs(p50 / floor - ratio) < 0.06 * ratio + 0.05, ln
