"""Load on the HTTP door of `edgecxr serve`, measured side by side in one run.

1. The bundle's own p50 inference time (one preprocessed image, batch 1, the runtime alone), in this
   process, before the node starts: the yardstick.
2. The node (`edgecxr serve BUNDLE --dicom-port 0 --http ...`) in its own process; one client alone
   (what the node adds to one inference), then CLIENTS tritonclient clients, each in a thread, send one validation X-ray (JPEG, the `image` BYTES input) at a time for
   SECONDS: requests per second, p50/p99 latency, the error rate, and the node's RSS at start and end.
3. Past the queue: OVER clients at once for a third of the time: how many 503s (with Retry-After),
   whether anything else failed, and the node's RSS after.

    .venv/bin/python benchmarks/serve/http_load.py dist/ci/nuc-int8 --seconds 60 --out benchmarks/serve/http-load-<cpu>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def cpu_flags() -> list[str]:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(w for w in ("avx2", "avx512_vnni", "amx_int8", "asimd", "asimddp") if w in words)


def rss_mb(pid: int) -> float:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return round(int(ln.split()[1]) / 1024, 1)
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def yardstick(bundle: Path, image: Path, n: int = 200) -> float:
    from edgecxr.device.api import open_bundle
    from edgecxr.shared.imageio import load_grey
    from edgecxr.shared.preprocess import preprocess_grey

    m = open_bundle(bundle, threads=2)
    x = preprocess_grey(load_grey(image), m.preprocess)[None].astype(np.float32)
    for _ in range(20):
        m.backend.infer(x)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        m.backend.infer(x)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1000)


def hammer(url: str, name: str, data: bytes, clients: int, seconds: float) -> dict:
    import tritonclient.http as th

    lat: list[float] = []
    codes: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.time() + seconds

    def one():
        c = th.InferenceServerClient(url, network_timeout=120, connection_timeout=60)
        arr = np.array([data], dtype=object)
        while time.time() < stop:
            inp = th.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(arr)
            t = time.perf_counter()
            try:
                c.infer(name, [inp])
                code = "200"
            except th.InferenceServerException as e:
                code = str(e.status() or "error")
                if code == "503":
                    time.sleep(0.05)
            except Exception as e:  # a dropped connection, a timeout
                code = e.__class__.__name__
            dt = time.perf_counter() - t
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code == "200":
                    lat.append(dt)

    ths = [threading.Thread(target=one) for _ in range(clients)]
    t0 = time.time()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.time() - t0
    a = np.array(lat) * 1000 if lat else np.zeros(1)
    total = sum(codes.values())
    return {"clients": clients, "seconds": round(wall, 1), "requests": total, "codes": codes,
            "ok_per_s": round(len(lat) / wall, 2), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2),
            "error_rate": round(sum(v for k, v in codes.items() if k not in ("200", "503")) / max(1, total), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--over", type=int, default=48)
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    image = a.image or sorted((ROOT / "tests/data/kermany_mini/PNEUMONIA").iterdir())[0]
    base_ms = yardstick(a.bundle, image)
    port = free_port()
    spool = Path(tempfile.mkdtemp(prefix="edgecxr-load-"))
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr", "serve", str(a.bundle), "--dicom-port", "0", "--http",
                             f"127.0.0.1:{port}", "--spool", str(spool), "--allow-unsigned", "--http-queue",
                             str(a.queue), "--threads", "2"], stderr=subprocess.PIPE, text=True)
    import tritonclient.http as th

    c = th.InferenceServerClient(f"127.0.0.1:{port}")
    t0 = time.time()
    while True:
        try:
            if c.is_server_ready():
                break
        except Exception:
            pass
        if time.time() - t0 > 120 or proc.poll() is not None:
            raise SystemExit("the node did not start")
        time.sleep(0.3)
    name = a.bundle.name
    data = image.read_bytes()
    hammer(f"127.0.0.1:{port}", name, data, 1, 3)  # warm up
    rss0 = rss_mb(proc.pid)
    single = hammer(f"127.0.0.1:{port}", name, data, 1, max(5.0, a.seconds / 6))
    load = hammer(f"127.0.0.1:{port}", name, data, a.clients, a.seconds)
    rss1 = rss_mb(proc.pid)
    over = hammer(f"127.0.0.1:{port}", name, data, a.over, max(10.0, a.seconds / 3))
    rss2 = rss_mb(proc.pid)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    res = {"bundle": name, "image": image.name, "image_bytes": len(data), "cpu_flags": cpu_flags(),
           "cpus": os.cpu_count(), "machine": platform.machine(), "queue": a.queue,
           "bench_p50_infer_ms": round(base_ms, 3), "single": single, "load": load, "over": over,
           "single_p50_over_bench_p50": round(single["p50_ms"] / base_ms, 1),
           "load_p50_over_bench_p50": round(load["p50_ms"] / base_ms, 1),
           "server_ms_per_request_under_load": round(1000 / max(load["ok_per_s"], 1e-9), 2),
           "rss_mb": {"start": rss0, "after_load": rss1, "after_overload": rss2},
           "alive_after": alive, "sigterm_exit": rc}
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
