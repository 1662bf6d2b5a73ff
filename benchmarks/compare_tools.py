"""Our runner's p50 against OpenVINO benchmark_app and LiteRT's litert-benchmark on the same
model files and thread count, measured side by side in one run.

    python benchmarks/compare_tools.py dist/mnv2-nuc-fp32 dist/mnv2-nuc-int8 dist/mnv2-rpi4-fp32 dist/mnv2-rpi4-int8

Writes benchmarks/tools-comparison.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from edgecxr.device.bench import BenchConfig, run, subject_from_bundle
from edgecxr.shared.sysinfo import cpu_model

BIN = Path(sys.executable).parent


def ours(bundle: Path, threads: int, iters: int) -> float:
    rec = run(subject_from_bundle(bundle), None, BenchConfig(warmup=20, iterations=iters, threads=threads,
                                                             accuracy=False), device="compare")
    return rec["latency_ms"]["p50"]


def benchmark_app(xml: Path, threads: int, iters: int, shape: str) -> float:
    cmd = [str(BIN / "benchmark_app"), "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1",
           "-nireq", "1", "-nthreads", str(threads), "-api", "sync", "-niter", str(iters),
           "-infer_precision", "f32", "-shape", shape]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"Median:\s+([\d.]+) ms", out)
    if not m:
        raise RuntimeError(out[-2000:])
    return float(m.group(1))


def litert_benchmark(tfl: Path, threads: int, iters: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        j = Path(d) / "r.json"
        subprocess.run([str(BIN / "litert-benchmark"), "--model", str(tfl), "--num_threads", str(threads),
                        "--num_runs", str(iters), "--warmup_runs", "20", "--result_json", str(j)],
                       capture_output=True, text=True, timeout=600)
        return float(json.loads(j.read_text())["latency"]["median_ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3, help="alternate tool/ours this many times; medians reported")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "tools-comparison.md")
    a = ap.parse_args()
    rows = []
    for b in a.bundles:
        m = json.loads((b / "manifest.json").read_text())
        if m["backend"] == "openvino":
            shape = "[" + ",".join(str(v) for v in m["input"]["shape"]) + "]"
            tool, fn = "benchmark_app", lambda b=b, m=m, shape=shape: benchmark_app(b / m["model_file"], a.threads, a.iterations, shape)
        elif m["backend"] == "litert":
            tool, fn = "litert-benchmark", lambda b=b, m=m: litert_benchmark(b / m["model_file"], a.threads, a.iterations)
        else:
            continue
        t_vals, o_vals = [], []
        for _ in range(a.repeats):  # interleave to share the machine's noise
            t_vals.append(fn())
            o_vals.append(ours(b, a.threads, a.iterations))
        t, o = sorted(t_vals)[len(t_vals) // 2], sorted(o_vals)[len(o_vals) // 2]
        rows.append((b.name, tool, t, o, o / t))
        print(f"{b.name}: {tool} median {t:.3f} ms, edgecxr p50 {o:.3f} ms, ratio {o / t:.3f}", flush=True)
    lines = ["# edgecxr bench against the runtimes' own benchmark tools", "",
             f"Same model files, {a.threads} threads, batch 1, {a.iterations} iterations per measurement, "
             f"{a.repeats} alternating repeats (median of medians). OpenVINO: `benchmark_app -hint none "
             "-nstreams 1 -nireq 1 -api sync -infer_precision f32`; LiteRT: `litert-benchmark` (XNNPACK).", "",
             "| bundle | tool | tool median ms | edgecxr p50 ms | edgecxr / tool |", "|---|---|---:|---:|---:|"]
    lines += [f"| {n} | {t} | {tv:.3f} | {ov:.3f} | {r:.3f} |" for n, t, tv, ov, r in rows]
    lines += ["", f"- command: `python benchmarks/compare_tools.py {' '.join(str(b) for b in a.bundles)}`",
              f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}",
              f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}", ""]
    a.out.write_text("\n".join(lines))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
