"""Every bundle on an emulated arm64 board: Debian 12 arm64 (Python 3.11) under QEMU user-mode.

The board is made by `make board-arm64` (tools/board_arm64.sh, root needed): a cached rootfs whose venv
holds edgecxr[rpi,nuc,jetson] installed from the wheel folder of `make board-wheels` with pip --no-index
and the network cut. Here the host exports every target and precision (the `bundles` fixture), and the
board runs `edgecxr verify`, `predict` and `bench` on them; per bundle the board's logits are compared
with the host's (x86) on the same preprocessed inputs, and the comparison is appended to
runs/arm64/compare.jsonl (benchmarks/arm64.md tells the story). Emulated latency says nothing about a
real board's speed and is not checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MINI, ROOT, assert_clean_error, run_cli

SCRIPT = ROOT / "tools" / "board_arm64.sh"
WHEELS = ROOT / "dist" / "board-wheels" / "all"
RECORD = Path(os.environ.get("EDGECXR_ARM64_RECORD", ROOT / "runs" / "arm64" / "compare.jsonl"))


def _board_root() -> Path | None:
    if os.geteuid() != 0 or not SCRIPT.exists():
        return None
    p = subprocess.run(["sh", str(SCRIPT), "path"], capture_output=True, text=True)
    root = Path(p.stdout.strip())
    ok = (root / ".complete").exists() and os.path.lexists(root / "opt/edgecxr/venv/bin/python") and WHEELS.is_dir()
    return root if ok else None


BOARD_ROOT = _board_root()
if BOARD_ROOT is None:
    why = "no emulated arm64 board (run `make board-arm64` as root: Debian host, qemu-user-static, debootstrap)"
    if os.environ.get("CI"):
        raise RuntimeError(f"{why}: CI must build it before the tests")
    pytest.skip(why, allow_module_level=True)

IMAGES = sorted(str(p) for p in MINI.rglob("*.jpeg"))[::4]  # 16 real X-rays, both classes
assert len(IMAGES) == 16


def board(*args: str, cpu: str = "cortex-a76", timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a command inside the emulated board (the venv's bin first in PATH)."""
    env = {**os.environ, "QEMU_CPU": cpu, "EDGECXR_BOARD_ENV": f"EDGECXR_TARGETS={ROOT / 'targets'}"}
    return subprocess.run(["sh", str(SCRIPT), "run", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module", autouse=True)
def current_edgecxr():
    """The board must run this working tree's edgecxr: rebuild its wheel and swap it in (offline, seconds)."""
    p = subprocess.run(["sh", str(SCRIPT), "refresh", str(WHEELS)], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=900)
    assert p.returncode == 0, p.stderr


def _host_logits(bundle: Path, out: Path, inputs: Path | None = None) -> dict:
    args = [sys.executable, str(ROOT / "tests" / "arm64_logits.py"), str(bundle), str(out)]
    args += ["--inputs", str(inputs)] if inputs else IMAGES
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    return dict(np.load(out))


def _board_logits(bundle: Path, out: Path, inputs: Path | None = None, cpu: str = "cortex-a76") -> dict:
    """The board preprocesses IMAGES itself (``x``) and runs the runtime on ``inputs`` (the host's) when given."""
    args = ["python", ROOT / "tests" / "arm64_logits.py", bundle, out, *IMAGES]
    args += ["--inputs", inputs] if inputs else []
    p = board(*args, cpu=cpu)
    assert p.returncode == 0, p.stderr
    return dict(np.load(out))


def compare(host: np.ndarray, dev: np.ndarray, threshold: float) -> dict:
    def prob(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e[:, 1] / e.sum(1)

    return {"max_logit_diff": float(np.abs(host - dev).max()),
            "mean_logit_diff": float(np.abs(host - dev).mean()),
            "bit_exact": bool(np.array_equal(host, dev)),
            "label_agreement": float(np.mean((prob(host) >= threshold) == (prob(dev) >= threshold))),
            "max_prob_diff": float(np.abs(prob(host) - prob(dev)).max()), "n": len(host)}


def _record(row: dict) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with RECORD.open("a") as f:
        f.write(json.dumps(row) + "\n")


def test_board_is_arm64_with_the_device_side_only():
    code = ("import platform, sys, importlib.util as u, numpy, onnxruntime, openvino, ai_edge_litert, edgecxr.device.bench; "
            "print(platform.machine(), sys.version.split()[0], numpy.__version__, onnxruntime.__version__, "
            "openvino.__version__.split('-')[0], [m for m in ('torch', 'torchvision', 'nncf', 'litert_torch', 'onnx') if u.find_spec(m)])")
    p = board("python", "-c", code)
    assert p.returncode == 0, p.stderr
    machine, py, np_ver, ort_ver, ov_ver, host = p.stdout.strip().split(" ", 5)
    assert machine == "aarch64" and py.startswith("3.11.") and np_ver.startswith("1.")
    assert (ort_ver, ov_ver) == ("1.32.0", "2026.4.1")
    assert host == "[]", f"the board has host packages: {host}"


def test_the_wheel_folder_installs_with_no_network():
    # the network cut the install uses: in a new network namespace nothing is reachable
    p = board("unshare", "-n", "python", "-c", "import socket; socket.create_connection(('pypi.org', 443), timeout=5)")
    assert p.returncode != 0 and ("OSError" in p.stderr or "gaierror" in p.stderr), p.stderr
    # every device-side dependency of every target resolves from the folder alone
    whl = next(WHEELS.glob("edgecxr-*.whl"))
    p = board("unshare", "-n", "python", "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
              "--find-links", WHEELS, "--report", "-", "-q", f"{whl}[rpi,nuc,jetson,serve]")
    assert p.returncode == 0, p.stderr
    names = {i["metadata"]["name"].lower() for i in json.loads(p.stdout)["install"]}
    assert {"edgecxr", "ai-edge-litert", "onnxruntime", "openvino", "numpy", "pillow", "pydicom"} <= names
    assert {"pynetdicom", "highdicom", "pylibjpeg-libjpeg", "starlette", "uvicorn", "prometheus_client"} <= {n.replace("-", "_") if n.startswith("prom") else n for n in names}


KEYS = [f"{t}-{p}" for t in ("rpi", "nuc", "jetson") for p in ("int8", "fp32")]


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS)
def test_bundle_on_arm64_matches_x86(bundles, key, tmp_path):
    b = bundles[key]
    man = json.loads((b / "manifest.json").read_text())
    t0 = time.monotonic()
    p = board("edgecxr", "verify", b)
    assert p.returncode == 0, p.stderr
    host = _host_logits(b, tmp_path / "host.npz")
    dev = _board_logits(b, tmp_path / "dev.npz", inputs=tmp_path / "host.npz")
    # the board preprocesses the X-rays as the host does, to float32 rounding (numpy 1.26 on arm64, 2.x here)
    pre = float(np.abs(host["x"] - dev["x"]).max())
    assert pre <= 1e-6, pre
    # the runtime on bit-identical inputs
    c = compare(host["logits"], dev["logits"], man["threshold"])
    c["preprocess_max_diff"] = pre
    info = json.loads(str(dev["meta"]))["info"]
    row = {"bundle": key, "target": man["target"], "precision": man["precision"], "backend": man["backend"],
           "runtime": f"{info['runtime']} {info['runtime_version']}", "device": info["device"],
           "qemu_cpu": "cortex-a76", "host_cpu": "x86-64 AVX2 (no VNNI)", **c}
    _record(row)
    if man["backend"] == "litert" and man["precision"] == "int8":
        assert c["bit_exact"], c  # the Pi's bundle: integer arithmetic, identical on both CPUs
    elif man["precision"] == "fp32":
        assert c["max_logit_diff"] <= 1e-4, c
    else:
        # ONNX Runtime / OpenVINO int8: x86 AVX2 kernels and arm64 dot-product kernels round differently
        # (benchmarks/arm64.md); the calls must still agree
        assert c["label_agreement"] >= 0.9 and c["max_logit_diff"] <= 2.0, c
    # the commands a user runs on the board
    p = board("edgecxr", "predict", b, *IMAGES[:4], "--json")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert [r["file"] for r in rows] == IMAGES[:4] and not any(r.get("error") for r in rows)
    # end to end (each machine preprocessing its own way): the same calls
    hp = run_cli("predict", b, *IMAGES[:4], "--json")
    assert hp.returncode == 0, hp.stderr
    here = [json.loads(ln) for ln in hp.stdout.splitlines() if ln.startswith("{")]
    assert [r["label"] for r in rows] == [r["label"] for r in here]
    _record({"bundle": key, "predict_end_to_end_max_prob_diff": max(abs(r["prob"] - h["prob"]) for r, h in zip(rows, here, strict=True))})
    res = tmp_path / "results"
    p = board("edgecxr", "bench", b, "--data", MINI, "--max-images", 8, "--warmup", 1, "--iterations", 3,
              "--results", res, "--device", "arm64-emulated")
    assert p.returncode == 0, p.stderr
    rec = json.loads((res / "arm64-emulated.jsonl").read_text().splitlines()[-1])
    assert rec["accuracy"]["n"] == 8 and rec["vs_float"]["matched"] == 8
    facts = rec["device_facts"]
    assert facts["machine"] == "aarch64" and facts["emulated"] == "qemu-user cortex-a76", facts
    assert "emulated" in facts["cpu_model"], facts
    print(f"{key}: {c} ({time.monotonic() - t0:.0f} s)")


@pytest.mark.slow
@pytest.mark.parametrize("key", ["rpi-int8", "rpi-fp32"])
def test_pi4_cpu_model_runs_the_pi_bundles_bit_exact(bundles, key, tmp_path):
    """A Pi 4's Cortex-A72 (no dot-product instructions): other XNNPACK kernels, the same int8 answers."""
    b = bundles[key]
    host = _host_logits(b, tmp_path / "host.npz")
    dev = _board_logits(b, tmp_path / "dev.npz", inputs=tmp_path / "host.npz", cpu="cortex-a72")
    man = json.loads((b / "manifest.json").read_text())
    c = compare(host["logits"], dev["logits"], man["threshold"])
    _record({"bundle": key, "target": man["target"], "precision": man["precision"], "backend": man["backend"],
             "qemu_cpu": "cortex-a72", "host_cpu": "x86-64 AVX2 (no VNNI)", **c})
    if man["precision"] == "int8":
        assert c["bit_exact"], c
    else:
        assert c["max_logit_diff"] <= 1e-4, c


def test_board_script_refuses_a_missing_wheel_folder(tmp_path):
    p = subprocess.run(["sh", str(SCRIPT), "install", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode != 0 and "no edgecxr wheel" in p.stderr and "Traceback" not in p.stderr


def _read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    import select

    seen, end = "", time.monotonic() + timeout
    while needle not in seen:
        assert proc.poll() is None, seen + proc.stderr.read()
        assert time.monotonic() < end, seen
        if select.select([proc.stderr], [], [], 0.5)[0]:
            seen += proc.stderr.readline()
    return seen


@pytest.mark.slow
def _stop_board_process(proc: subprocess.Popen, timeout: float) -> str:
    """SIGTERM to a command started in the board in its own session (board_arm64.sh run forks), then its stderr."""
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[1]


def test_emulated_board_on_a_serial_cable(bundles, tmp_path):
    """`edgecxr agent` inside the board on one end of a pty pair, `edgecxr remote` on the host at the other."""

    from .link.faults import FaultRelay

    b = bundles["rpi-int8"]
    imgs = IMAGES[:3]
    relay = FaultRelay.pty().start()
    env = {**os.environ, "QEMU_CPU": "cortex-a76"}
    agent = subprocess.Popen(["sh", str(SCRIPT), "run", "edgecxr", "agent", "--port", relay.a_path,
                              "--store", str(tmp_path / "store"), "--data", str(MINI)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    res = tmp_path / "results"
    try:
        _read_until(agent, "serving on", 300)
        p = run_cli("remote", "push", b, "--port", relay.b_path)
        assert p.returncode == 0, p.stderr
        p = run_cli("remote", "bench", b, "--port", relay.b_path, "--results", res, "--warmup", 1, "--iterations", 3,
                    "--max-images", 8)
        assert p.returncode == 0, p.stderr
        p = run_cli("remote", "predict", *imgs, "--bundle", b.name, "--port", relay.b_path, "--json")
        assert p.returncode == 0, p.stderr
        remote = {Path(r["file"]).name: r for r in map(json.loads, p.stdout.splitlines())}
    finally:
        err = _stop_board_process(agent, 60)
        relay.close()
    assert "Traceback" not in err, err
    # the record names the emulated board honestly
    (jsonl,) = res.glob("*.jsonl")
    rec = json.loads(jsonl.read_text().splitlines()[-1])
    facts = rec["device_facts"]
    assert facts["machine"] == "aarch64" and facts["emulated"] == "qemu-user cortex-a76", facts
    assert rec["device"].endswith("-emulated") and "neon-dotprod" in rec["device"], rec["device"]
    assert rec["data"]["n"] == 8 and rec["runtime"]["runtime"] == "ai-edge-litert"
    # LiteRT int8 on arm64 answers exactly as on x86
    p = run_cli("predict", b, *imgs, "--json")
    assert p.returncode == 0, p.stderr
    here = {Path(r["file"]).name: r for r in map(json.loads, p.stdout.splitlines())}
    assert {k: (r["prob"], r["label"]) for k, r in remote.items()} == {k: (r["prob"], r["label"]) for k, r in here.items()}
    # the report keeps the emulated board apart from real devices and shows none of its latency
    p = run_cli("bench", b, "--data", MINI, "--max-images", 8, "--warmup", 1, "--iterations", 3, "--results", res,
                "--device", "x86-host")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "RESULTS.md"
    p = run_cli("report", "--results", res, "--out", out)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    host_part, emu_part = text.split(f"## {rec['device']}")
    assert "## x86-host" in host_part and "**Emulated** (qemu-user cortex-a76)" in emu_part
    emu_row = next(ln for ln in emu_part.splitlines() if ln.startswith(f"| {b.name} |"))
    assert emu_row.split("|")[5:8] == [" – ", " – ", " – "], emu_row


def test_serve_on_the_board_takes_dicom_and_oip(bundles, tmp_path):
    """`edgecxr serve` inside the board, both doors: dcmtk's storescu on the host sends a DX film into the
    board's DICOM port and the board writes its SR; tritonclient on the host reads a file through the
    board's Open Inference Protocol port, and gets the probability `predict` gives on x86."""
    import socket
    import urllib.request

    from tests.hostile import write_dicom
    from tests.serve.harness import study as _study
    from tests.serve.harness import tool, which
    from tests.serve.harness import xray as _xray

    if which("storescu") is None:
        if os.environ.get("CI"):
            pytest.fail("storescu is missing: `make serve-deps` installs dcmtk")
        pytest.skip("storescu is missing (make serve-deps)")
    th = pytest.importorskip("tritonclient.http")

    def free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    b = bundles["rpi-int8"]
    hport, dport, spool = free(), free(), tmp_path / "spool"
    env = {**os.environ, "QEMU_CPU": "cortex-a76"}
    node = subprocess.Popen(["sh", str(SCRIPT), "run", "edgecxr", "serve", str(b), "--allow-unsigned", "--dicom-port",
                             str(dport), "--http", f"127.0.0.1:{hport}", "--spool", str(spool)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        t0 = time.monotonic()
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{hport}/v2/health/ready", timeout=5).status == 200:
                    break
            except OSError:
                pass
            assert node.poll() is None, node.stderr.read()
            assert time.monotonic() - t0 < 300, "serve on the board was not ready in 300 s"
            time.sleep(1)
        c = th.InferenceServerClient(f"127.0.0.1:{hport}", network_timeout=300)
        assert c.get_model_metadata(b.name)["name"] == b.name
        inp = th.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([Path(IMAGES[0]).read_bytes()], dtype=object))
        prob = float(c.infer(b.name, [inp]).as_numpy("probability")[0])
        p = run_cli("predict", b, IMAGES[0], "--json")
        assert p.returncode == 0, p.stderr
        assert abs(prob - json.loads(p.stdout.splitlines()[0])["prob"]) < 1e-6  # LiteRT int8: x86 = arm64
        film = write_dicom(tmp_path / "chest.dcm", _xray("PNEUMONIA"), **_study())
        s = subprocess.run([tool("storescu"), "-aec", "EDGECXR", "127.0.0.1", str(dport), str(film)], capture_output=True,
                           text=True, timeout=300)
        assert s.returncode == 0, s.stdout + s.stderr
        t0 = time.monotonic()
        while not list((spool / "sr").glob("*.dcm")):
            assert time.monotonic() - t0 < 300, "no SR from the board in 300 s"
            time.sleep(1)
        lines = [json.loads(x) for x in (spool / "results.jsonl").read_text().splitlines()]
        assert [r["status"] for r in lines if r.get("door") == "dicom"] == ["read"], lines
    finally:
        err = _stop_board_process(node, 120)
    assert "Traceback" not in err and "stopped" in err, err


@pytest.mark.slow
def test_openvino_int8_on_a_pi4_core_is_a_clean_error_or_runs(bundles):
    """OpenVINO's ARM plugin cannot run some int8 layers on a Cortex-A72 (no fp16 arithmetic, no dot
    product): `predict` must say so in one line, not with a traceback (or run, once OpenVINO can)."""
    p = board("edgecxr", "predict", bundles["nuc-int8"], IMAGES[0], cpu="cortex-a72")
    if p.returncode == 0:
        assert "p(pneumonia)=" in p.stdout
    else:
        assert_clean_error(p, "openvino: cannot run the model on this CPU")
