"""The one runner on real bundles of all three backends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgecxr.device.bench import BenchConfig, read_results, run, store, subject_from_bundle
from edgecxr.shared.errors import BundleError

from .conftest import MINI, ROOT, assert_clean_error, run_cli


def test_bench_every_backend(bundles, tmp_path):
    results = tmp_path / "results"
    args = [str(bundles[k]) for k in sorted(bundles)]
    p = run_cli("bench", *args, "--data", MINI, "--device", "test-box", "--results", results,
                "--iterations", "20", "--warmup", "3", "--extra-batch", "4")
    assert p.returncode == 0, p.stderr
    recs = read_results(results)
    assert len(recs) == 6 and (results / "test-box.jsonl").exists()
    for r in recs:
        assert r["schema"] == 1 and r["device"] == "test-box"
        lat = r["latency_ms"]
        assert lat["n"] == 20 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["throughput_ips"] > 0
        assert r["batch_latency_ms"]["batch"] == 4
        assert r["cold_start_ms"]["load"] > 0 and r["preprocess_ms"]["n"] == 64
        assert r["memory_mb"]["peak_rss"] > 0 and r["subject"]["model_bytes"] > 0
        assert r["runtime"]["threads"] and r["runtime"]["runtime_version"]
        assert r["device_facts"]["cores"] >= 1 and r["device_facts"]["cpu_model"]
        vf = r["vs_float"]
        assert vf["matched"] == 64 and vf["label_mismatch"] == 0
        assert abs(vf["auc_drop"]) < 0.05 and vf["label_agreement"] >= 0.9
        assert r["accuracy"]["auc"] > 0.85 and 0 <= r["accuracy"]["ece"] < 0.5
        if r["subject"]["precision"] == "fp32":
            assert abs(vf["auc_drop"]) < 1e-3
    be = {r["subject"]["backend"]: r["runtime"] for r in recs}
    assert set(be) == {"litert", "openvino", "onnxruntime"}
    assert be["openvino"]["precision"] == "f32"  # pinned: no silent bf16
    assert be["onnxruntime"]["device"] == "CPUExecutionProvider"
    assert any("TensorrtExecutionProvider" in n for n in be["onnxruntime"]["notes"])
    # records travel: bundles by name, no folder of this machine (the bundles live under /tmp here)
    text = (results / "test-box.jsonl").read_text()
    for r in recs:
        assert r["subject"]["bundle"] == r["subject"]["name"] or "/" not in r["subject"]["bundle"]
    for folder in {str(b.parent) for b in bundles.values()} | {str(ROOT)}:
        assert folder not in text


def test_backend_options_go_to_the_runtime_that_reads_them(bundles, tmp_path):
    """``--option KEY=VALUE`` is checked against the runtimes' own option keys: each subject gets the
    keys its runtime reads (LiteRT without XNNPACK really runs without it; OpenVINO gets its
    precision hint), and a key no subject's runtime reads stops the command with one line."""
    results = tmp_path / "results"
    args = [str(bundles["rpi-int8"]), str(bundles["nuc-int8"])]
    p = run_cli("bench", *args, "--data", MINI, "--results", results, "--device", "opt-box", "--iterations", "3",
                "--warmup", "1", "--option", "use_xnnpack=false", "--option", "inference_precision=f32")
    assert p.returncode == 0, p.stderr
    recs = {r["subject"]["backend"]: r for r in read_results(results)}
    assert recs["litert"]["config"]["options"] == {"use_xnnpack": False}
    assert "XNNPACK" not in recs["litert"]["runtime"]["device"], recs["litert"]["runtime"]
    assert recs["openvino"]["config"]["options"] == {"inference_precision": "f32"}
    assert recs["openvino"]["runtime"]["precision"] == "f32"
    p = run_cli("bench", *args, "--data", MINI, "--results", tmp_path / "r2", "--option", "providers_typo=1")
    assert_clean_error(p, "--option providers_typo", "litert: use_xnnpack")
    assert not (tmp_path / "r2").exists()
    assert_clean_error(run_cli("bench", *args, "--option", "novalue"), "bad --option 'novalue'")


def test_pairing_is_by_sha256_not_order(bundles, tmp_path):
    """Images in another folder layout and order still pair with the float reference."""
    shuffled = tmp_path / "eval"
    for i, f in enumerate(sorted(MINI.rglob("*.jpeg"), reverse=True)):
        d = shuffled / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}-{f.name}").write_bytes(f.read_bytes())
    (shuffled / "NORMAL" / "extra.jpeg").write_bytes((ROOT / "tests/data/fullres/IM-0206-0001.jpeg").read_bytes())
    s = subject_from_bundle(bundles["nuc-fp32"])
    a = run(s, MINI, BenchConfig(iterations=2, warmup=0), device="x")
    b = run(s, shuffled, BenchConfig(iterations=2, warmup=0), device="x")
    assert b["vs_float"]["matched"] == 64 and b["vs_float"]["unmatched"] == 1
    assert b["vs_float"]["auc_drop"] == pytest.approx(a["vs_float"]["auc_drop"], abs=1e-9)


def test_tampered_or_truncated_bundle_refused_before_loading(bundle_copy, tmp_path):
    b = bundle_copy("rpi-int8")
    model = b / "model.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        subject_from_bundle(b)
    p = run_cli("bench", b, "--data", MINI, "--results", tmp_path / "r")
    assert_clean_error(p, "model.tflite", "tampered")
    assert not (tmp_path / "r").exists()
    t = bundle_copy("nuc-int8")
    (t / "model.bin").write_bytes((t / "model.bin").read_bytes()[:1000])
    assert_clean_error(run_cli("bench", t, "--data", MINI), "model.bin", "truncated")
    m = bundle_copy("jetson-int8")
    man = json.loads((m / "manifest.json").read_text())
    man["schema"] = 99
    (m / "manifest.json").write_text(json.dumps(man))
    assert_clean_error(run_cli("verify", m), "schema")
    (m / "manifest.json").write_text("{not json")
    assert_clean_error(run_cli("bench", m), "manifest.json")


def test_interrupted_bench_leaves_results_intact(bundles, tmp_path):
    results = tmp_path / "results"
    rec = run(subject_from_bundle(bundles["rpi-fp32"]), MINI, BenchConfig(iterations=3, warmup=1), device="box")
    path = store(rec, results)
    before = path.read_bytes()
    # kill a bench in the middle of its (long) timed loop: no torn line, earlier record untouched
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr", "bench", str(bundles["rpi-fp32"]), "--data", str(MINI),
                             "--device", "box", "--results", str(results), "--iterations", "100000000"],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert path.read_bytes() == before
    assert [p.name for p in results.iterdir()] == [path.name]  # no temp files left behind
    assert len(read_results(results)) == 1
    # Ctrl-C: one line, exit 130, results intact
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr", "bench", str(bundles["rpi-fp32"]), "--data", str(MINI),
                             "--device", "box", "--results", str(results), "--iterations", "100000000"],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(15)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # never leave a 10^8-iteration bench running behind a failed test
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err
    assert path.read_bytes() == before


def test_device_side_never_imports_torch(bundles, tmp_path):
    code = f"""
import sys
import edgecxr, edgecxr.cli, edgecxr.device.bench, edgecxr.device.bundle, edgecxr.device.backends, edgecxr.device.gate
import edgecxr.device.predict, edgecxr.device.api, edgecxr.device.link.host, edgecxr.device.link.board
import edgecxr.shared.data, edgecxr.shared.imageio, edgecxr.shared.preprocess, edgecxr.shared.metrics
import edgecxr.device.report, edgecxr.shared.targets, edgecxr.shared.runtimes
from edgecxr.device.bench import run, subject_from_bundle, BenchConfig
for k in {sorted(str(v) for v in bundles.values())!r}:
    run(subject_from_bundle(k), {str(MINI)!r}, BenchConfig(iterations=2, warmup=0), device="x")
from edgecxr.device.predict import predict
predict({str(bundles['rpi-int8'])!r}, [{str(ROOT / 'tests/data/fullres/IM-0206-0001.jpeg')!r}])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "litert_torch", "nncf", "onnx", "matplotlib"))
print("HEAVY", heavy)
assert not heavy, heavy
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_predict(bundles, tmp_path):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"nope")
    p = run_cli("predict", bundles["nuc-int8"], ROOT / "tests/data/fullres/person1320_virus_2277.jpeg", bad, "--json")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    rows = [json.loads(x) for x in p.stdout.splitlines()]
    assert rows[0]["label"] in ("NORMAL", "PNEUMONIA") and 0 <= rows[0]["prob"] <= 1
    assert "error" in rows[1]
