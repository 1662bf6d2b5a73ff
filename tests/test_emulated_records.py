"""An emulated board's records (EDGECXR_EMULATED, set by tools/board_arm64.sh) say so and stay apart in the report."""

import json

from tests.conftest import MINI, run_cli


def test_emulated_records_are_marked_and_kept_apart(bundles, tmp_path):
    b, res = bundles["nuc-fp32"], tmp_path / "results"
    common = ["bench", b, "--data", MINI, "--max-images", 8, "--warmup", 1, "--iterations", 3, "--results", res]
    p = run_cli(*common, "--device", "real-board")
    assert p.returncode == 0, p.stderr
    # the same device name, emulated: never merged with the real device's latency
    p = run_cli(*common, "--device", "real-board", env={"EDGECXR_EMULATED": "qemu-user cortex-a76"})
    assert p.returncode == 0, p.stderr
    # with no --device the default name says it too
    p = run_cli(*common, env={"EDGECXR_EMULATED": "qemu-user cortex-a76"})
    assert p.returncode == 0, p.stderr
    recs = [json.loads(ln) for f in sorted(res.glob("*.jsonl")) for ln in f.read_text().splitlines()]
    assert sorted(r["device_facts"]["emulated"] or "" for r in recs) == ["", "qemu-user cortex-a76", "qemu-user cortex-a76"]
    assert any(r["device"].endswith("-emulated") and r["device"] != "real-board" for r in recs)
    out = tmp_path / "RESULTS.md"
    p = run_cli("report", "--results", res, "--out", out)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    heads = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert heads[0] == "## real-board" and "## real-board-emulated" in heads and len(heads) == 3, heads
    real, rest = text.split("## real-board-emulated")
    assert "**Emulated**" not in real and rest.count("**Emulated** (qemu-user cortex-a76)") == 2
    rows = [ln for ln in rest.splitlines() if ln.startswith(f"| {b.name} |")]
    assert len(rows) == 2 and all(r.split("|")[5:8] == [" – ", " – ", " – "] for r in rows), rows
    real_row = next(ln for ln in real.splitlines() if ln.startswith(f"| {b.name} |"))
    assert real_row.split("|")[5] != " – "
