"""A board's own install: edgecxr[rpi-legacy] (tflite-runtime 2.14, numpy 1.x, no torch) in .venv-board.

The host venv exports the bundles (litert-torch, ai-edge-litert); the board venv, made by
`make board-setup` (which `make test` runs), must verify, bench and predict them with nothing
but tflite_runtime, and give the same answers as ai_edge_litert does on the host.
"""

import json
import os
import subprocess
import sys

import pytest

from .conftest import MINI, ROOT

BOARD = ROOT / ".venv-board" / "bin"

if not (BOARD / "python").exists():
    if os.environ.get("CI"):
        raise RuntimeError(".venv-board is missing: CI must run `make test`, which builds it (make board-setup)")
    pytest.skip("no .venv-board: run `make board-setup` (make test does)", allow_module_level=True)

IMAGES = sorted(str(p) for p in MINI.rglob("*.jpeg"))[:24]


def board(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(BOARD / "python"), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_board_install_is_device_side_only():
    code = ("import importlib.util as u, numpy, tflite_runtime; "
            "import edgecxr.device.bench, edgecxr.device.backends.litert, edgecxr.device.gate, edgecxr.device.link.agent; "
            "print(numpy.__version__, tflite_runtime.__version__, "
            "[m for m in ('torch', 'ai_edge_litert', 'openvino', 'onnxruntime') if u.find_spec(m)])")
    p = board("-c", code)
    assert p.returncode == 0, p.stderr
    numpy_ver, tfl_ver, present = p.stdout.split(" ", 2)
    assert numpy_ver.startswith("1.") and tfl_ver == "2.14.0"
    assert present.strip() == "[]", f"the board install pulled host packages: {present}"


def _predict(python: str, bundle) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    p = subprocess.run([python, "-m", "edgecxr", "predict", str(bundle), *IMAGES, "--json"], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == len(IMAGES) and not any(r.get("error") for r in rows)
    return {r["file"]: r["prob"] for r in rows}


def test_tflite_runtime_agrees_with_ai_edge_litert(bundles):
    # fp32: the same arithmetic, rounding aside
    host, dev = _predict(sys.executable, bundles["rpi-fp32"]), _predict(str(BOARD / "python"), bundles["rpi-fp32"])
    assert dev.keys() == host.keys()
    assert max(abs(dev[k] - host[k]) for k in host) <= 1e-4
    # int8: tflite-runtime 2.14 runs its builtin kernels, ai-edge-litert XNNPACK's; their requantisation
    # rounds differently, so logits may differ by a few output steps, but the calls must agree
    b = bundles["rpi-int8"]
    host, dev = _predict(sys.executable, b), _predict(str(BOARD / "python"), b)
    thr = json.loads((b / "manifest.json").read_text())["threshold"]
    diffs = [abs(dev[k] - host[k]) for k in host]
    agree = sum((dev[k] >= thr) == (host[k] >= thr) for k in host) / len(host)
    assert sum(diffs) / len(diffs) <= 0.03 and max(diffs) <= 0.15, (sum(diffs) / len(diffs), max(diffs))
    assert agree >= 0.9, agree


def test_board_bench_record_says_what_ran(bundles, tmp_path):
    p = board("-m", "edgecxr", "bench", bundles["rpi-int8"], "--data", MINI, "--device", "board-venv",
              "--results", tmp_path, "--warmup", "2", "--iterations", "5")
    assert p.returncode == 0, p.stderr
    rec = json.loads((tmp_path / "board-venv.jsonl").read_text().splitlines()[-1])
    assert rec["runtime"]["runtime"] == "tflite-runtime" and rec["runtime"]["runtime_version"] == "2.14.0"
    assert rec["accuracy"]["n"] == 64 and rec["vs_float"]["matched"] == 64
    assert rec["vs_float"]["label_agreement"] >= 0.9 and abs(rec["vs_float"]["auc_drop"]) <= 0.05
