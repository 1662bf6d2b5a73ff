"""`edgecxr pipeline`: raw images to gated bundles, every step real, on the shipped mini set."""

import json
import os
import subprocess
import sys

from .conftest import MINI, TINY, assert_clean_error, run_cli


def test_pipeline_quick_end_to_end(tmp_path):
    out = tmp_path / "pipe"
    p = run_cli("pipeline", MINI, "--quick", "--out", out)
    log = p.stdout + p.stderr
    # the exit status is the gate's: a 52-image, 6-epoch model may well fail it, but nothing else may
    assert p.returncode in (0, 1), log
    for k in range(1, 8):
        assert f"[{k}/7]" in log, f"step {k} missing:\n{log}"
    split = json.loads((out / "split.json").read_text())
    assert split and (out / "train" / "best.pt").exists() and (out / "pruned" / "best.pt").exists()
    assert len(list((out / "calibration" / "calib").rglob("*.png"))) + \
        len(list((out / "calibration" / "calib").rglob("*.jp*g"))) > 0

    # every demo target in int8 and fp32, each bundle benchmarked once, reported and gated
    from edgecxr.host.workflows import TARGETS
    from edgecxr.shared.targets import get_target

    assert {"rpi", "nuc", "jetson", "x86-ort"} <= set(TARGETS)
    names = sorted(d.name for d in (out / "dist").iterdir() if d.is_dir())
    assert names == sorted(f"{get_target(t).name}-{p}" for t in TARGETS for p in ("int8", "fp32"))
    recs = [json.loads(line) for f in (out / "results").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted(r["subject"]["name"] for r in recs) == names
    assert all(r["accuracy"]["auc"] is not None for r in recs)
    assert (out / "RESULTS.md").read_text().count("int8") >= 3

    gate = (out / "gate.md").read_text()
    verdict_rows = [ln for ln in gate.splitlines() if ln.startswith("| ") and "int8" in ln]
    assert len(verdict_rows) == len(TARGETS)
    failed = sum("FAIL" in ln for ln in verdict_rows)
    assert (p.returncode == 1) == (failed > 0)
    # the printed table carries the gate's verdict for every int8 bundle, never a placeholder
    table = [ln for ln in log.splitlines() if ln.split()[:1] and ln.split()[0] in names]
    assert len(table) == 2 * len(TARGETS)
    for ln in table:
        assert ln.split()[-1] in (("PASS", "FAIL") if "-int8" in ln.split()[0] else ("-",)), ln
    assert json.loads((out / "pipeline.json").read_text())["quick"] is True
    cfg = json.loads((out / "train" / "config.json").read_text())["train"]
    assert cfg["recipe"] == "acquisition" and cfg["threshold_rule"] == "sens=0.95"

    # a step made with other settings is never silently reused
    before = (out / "train" / "best.pt").read_bytes()
    p = run_cli("pipeline", MINI, "--quick", "--out", out, "--recipe", "paper")
    assert_clean_error(p, "recipe='acquisition'", "another --out")
    assert (out / "train" / "best.pt").read_bytes() == before


def test_pipeline_missing_source_is_a_clean_error(tmp_path):
    p = run_cli("pipeline", tmp_path / "nope", "--quick", "--out", tmp_path / "out")
    assert_clean_error(p, "nope")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_demo_and_export_find_the_repository_from_any_folder(tmp_path):
    """`make demo` reads the repository's models/, data/ and calibration/, and export reads targets/,
    wherever it is started from (both broke silently when the modules moved a level down)."""
    from edgecxr.host import workflows

    root = workflows.ROOT
    assert (root / "pyproject.toml").is_file() and (root / "targets").is_dir()
    assert [m.tag for m in workflows.reference_models(root / "models")][:1] == ["mnv2"]
    assert (root / "data" / "kermany224-val").is_dir() and (root / "calibration" / "kermany224").is_dir()
    env = {k: v for k, v in os.environ.items() if k != "EDGECXR_TARGETS"}  # found by itself, as for a user
    p = subprocess.run([sys.executable, "-m", "edgecxr", "export", str(TINY), "--target", "rpi", "--precision",
                        "fp32", "--data", str(MINI), "--out", str(tmp_path / "d")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "d" / "rpi4-fp32" / "manifest.json").is_file()
