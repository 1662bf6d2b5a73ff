"""The pictures: int8 against fp32 from gate details, and the report's per-device plots.

Fed with the real benchmark records in benchmarks/results (real bundles on a real machine).
"""

import json
from pathlib import Path

import pytest

from edgecxr.device.bench import read_results
from edgecxr.device.report import latest_per_subject, plot_device
from edgecxr.shared.errors import DataError

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEV = "x86_64-amd-epyc-2c"


@pytest.fixture(scope="module")
def recs():
    records = [r for r in read_results(RESULTS) if r["device"] == DEV]
    if not records:
        pytest.skip(f"no benchmark records of {DEV} in {RESULTS}")
    by_dev = latest_per_subject(records)
    assert len(by_dev) == 1
    return next(iter(by_dev.values()))


def _png(path: Path, min_w: int = 400, min_h: int = 300) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 5000, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert min_w <= w <= 4000 and min_h <= h <= 4000, (path, w, h)
    return w, h


def _details(recs, names: list[str], max_auc_drop=0.005, min_agreement=0.995) -> dict:
    """A gate details dict as ``edgecxr gate --details`` writes it, from real bench records."""
    rows, pairs = [], []
    for name in names:
        r = recs[name]
        s, v = r["subject"], r["vs_float"]
        thr = r["accuracy"]["threshold"]
        n = len(v["labels"])
        sev = [1 + i % 3 for i in range(n)]
        for images in ("reference", "stress:blur"):
            agree = v["label_agreement"]
            verdict = "PASS" if v["auc_drop"] <= max_auc_drop and agree >= min_agreement else "FAIL"
            rows.append({"bundle": name, "precision": s["precision"], "backend": s["backend"], "n": n,
                         "auc_float": v["auc_float"], "auc": v["auc"], "auc_drop": v["auc_drop"], "ci": [0, 0],
                         "p": v["delong_p"], "agreement": agree, "verdict": verdict, "reason": "",
                         "images": images, "against": "manifest", "mean_abs_diff": v["mean_abs_prob_diff"],
                         "max_abs_diff": v["max_abs_prob_diff"], "flipped": []})
            pair = {"bundle": name, "images": images, "threshold": thr, "labels": v["labels"],
                    "p_fp32": v["float_probs"], "p": v["probs"]}
            if images.startswith("stress:"):
                pair["severity"] = sev
            pairs.append(pair)
    return {"kind": "edgecxr-gate", "schema": 1, "max_auc_drop": max_auc_drop, "min_agreement": min_agreement,
            "stress": None, "rows": rows, "pairs": pairs}


def test_int8_vs_fp32_one_png_per_bundle(recs, tmp_path):
    from edgecxr.shared.plots import int8_vs_fp32

    names = ["mnv2-rpi4-int8", "mnv2-pruned50-jetson-orin-nano-int8"]
    # rpi4 int8 agrees on 99.4% of the images: FAIL under the 0.995 limit, so both verdicts are drawn
    d = _details(recs, names)
    assert {r["verdict"] for r in d["rows"]} == {"PASS", "FAIL"}
    f = tmp_path / "gate.json"
    f.write_text(json.dumps(d))
    out = tmp_path / "pics"
    paths = int8_vs_fp32(f, out)
    assert [p.name for p in paths] == [f"{n}-vs-fp32.png" for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # nothing else, no temp files
    for p in paths:
        _png(p)

    # no probability pairs (every bundle failed before pairing): no pictures
    f.write_text(json.dumps({**d, "pairs": []}))
    assert int8_vs_fp32(f, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("content", [None, "", "not json {", json.dumps([1, 2]),
                                     json.dumps({"kind": "edgecxr-bench", "pairs": []}),
                                     json.dumps({"kind": "edgecxr-gate", "rows": [],
                                                 "pairs": [{"bundle": "b", "images": "reference", "labels": [0, 1],
                                                            "p_fp32": [0.1], "p": [0.1, 0.9]}]})])
def test_int8_vs_fp32_bad_file(tmp_path, content):
    from edgecxr.shared.plots import int8_vs_fp32

    f = tmp_path / "gate.json"
    if content is not None:
        f.write_text(content)
    with pytest.raises(DataError) as e:
        int8_vs_fp32(f, tmp_path / "pics")
    assert str(f) in str(e.value)
    assert not (tmp_path / "pics").exists()


def test_plot_device_names(recs, tmp_path):
    paths = plot_device(DEV, recs, tmp_path)
    assert [p.name for p in paths] == [f"{DEV}-latency-size.png", f"{DEV}-roc.png"]
    for p in paths:
        _png(p)
    # only unpruned bundles (one ROC panel) and records without float probabilities (no ROC at all)
    full = type(recs)((k, v) for k, v in recs.items() if "pruned" not in k)
    assert [p.name for p in plot_device("full", full, tmp_path / "full")] == ["full-latency-size.png", "full-roc.png"]
    torch_only = type(recs)((k, v) for k, v in recs.items() if v["subject"]["backend"] == "torch")
    assert [p.name for p in plot_device("torch", torch_only, tmp_path / "t")] == ["torch-latency-size.png"]
