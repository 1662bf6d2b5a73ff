"""This machine's compute floor: what the best dense kernel reaches, as a yardstick for a bundle's latency.

fp32: numpy's SGEMM (OpenBLAS) on square float32 matrices, in a child process with the bench's
thread count and with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed from its environment
(a forced core type or cache size would make OpenBLAS pick a slower kernel than the CPU has). The
best of a few repeats counts: a floor is what the hardware allows, not what a loaded moment gave.

int8: the fp32 figure times the int8 multiply-accumulates one instruction does where an fp32 FMA
does one (``INT8_PER_FP32``): 4 with VNNI (``vpdpbusd``) or the arm64 dot product (``sdot``), 4/3
on AVX2 without VNNI (``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` for 4 products), 2 on arm64 NEON
without the dot product. An upper bound on what int8 kernels can reach, derived, not measured.

A bundle's floor is its model's FLOPs (counted at export, ``manifest["compute"]``) at that rate;
``edgecxr report`` prints each bundle's p50 against it, so every later run shows how far a
runtime is from the hardware.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Any

INT8_PER_FP32 = {"amx": 4.0, "avx512vnni": 4.0, "avxvnni": 4.0, "avx2": 4 / 3, "sse": 1.0,
                 "neon-i8mm": 4.0, "neon-dotprod": 4.0, "neon": 2.0, "unknown": 1.0}
# AMX tiles go far beyond 4x on large matrices, but MobileNetV2's small layers run on its VNNI units.

_CHILD = r"""
import json, os, sys, time
import numpy as np
sizes, reps = json.loads(sys.argv[1]), int(sys.argv[2])
best = {}
for n in sizes:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
    best[n] = 2 * n ** 3 / min(ts) / 1e9
cfg = {}
try:
    cfg = {k: v for k, v in np.show_config(mode="dicts")["Build Dependencies"]["blas"].items() if k in ("name", "version")}
except Exception:
    pass
env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")}
print(json.dumps({"gflops_by_size": best, "blas": cfg, "numpy": np.__version__, "env": env}))
"""


@functools.lru_cache(maxsize=8)
def _measure(threads: int, sizes: tuple[int, ...], reps: int) -> dict[str, Any] | None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    try:
        p = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(list(sizes)), str(reps)], env=env,
                           capture_output=True, text=True, timeout=120)
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return out


def measure(threads: int, isa: str, sizes: tuple[int, ...] = (1024, 2048), reps: int = 3) -> dict[str, Any] | None:
    """{"sgemm_gflops", "int8_gops", "int8_per_fp32", ...} for ``threads`` threads; None if it cannot run."""
    m = _measure(int(threads), tuple(sizes), int(reps))
    if not m:
        return None
    g = max(m["gflops_by_size"].values())
    k = INT8_PER_FP32.get(isa, 1.0)
    return {"sgemm_gflops": round(g, 2), "int8_gops": round(g * k, 2), "int8_per_fp32": round(k, 3),
            "int8_isa": isa, "threads": int(threads),
            "gflops_by_size": {str(n): round(v, 2) for n, v in m["gflops_by_size"].items()},
            "blas": m.get("blas") or {}, "numpy": m.get("numpy"), "env": m.get("env") or {},
            "how": "numpy float32 matmul, best of repeats, OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset; "
                   "int8 = fp32 x int8 MACs per fp32 FMA of this instruction set (derived)"}


def floor_ms(flops: float | None, floor: dict[str, Any] | None, precision: str) -> float | None:
    """The time ``flops`` take at this machine's peak for ``precision`` (int8: the derived int8 peak)."""
    if not flops or not floor:
        return None
    rate = floor["int8_gops"] if precision == "int8" else floor["sgemm_gflops"]
    return float(flops) / (rate * 1e9) * 1e3 if rate else None
