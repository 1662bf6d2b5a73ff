"""Latency of several bundles side by side: every bundle's backend open at once, timed in interleaved
rounds on one real image, so a change in the machine's load hits all of them alike. p50 per bundle and
int8/fp32 per twin pair (``<name>-int8`` against ``<name>-fp32``).

    python benchmarks/quantization/interleaved.py dist/cpu-run/* --out benchmarks/quantization/ort-cpu/interleaved.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "kermany224-val")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    import os

    from edgecxr.device.bench import subject_from_bundle
    from edgecxr.shared.data import load_item, scan
    from edgecxr.shared.preprocess import preprocess_grey
    from edgecxr.shared.sysinfo import device_facts

    subjects = [subject_from_bundle(b) for b in a.bundles if (b / "manifest.json").exists()]
    ds = scan(a.data)
    first = sorted(ds.items, key=lambda it: it.path)[0]  # the image bench times, too
    grey = load_item(ds.root, first)
    runs, threads = {}, {}
    for s in subjects:
        threads[s.name] = min(s.default_threads or os.cpu_count() or 1, os.cpu_count() or 1)
        b = s.open(threads[s.name], {})
        x = b.input_spec.encode(preprocess_grey(grey, s.preprocess)[None])
        for _ in range(10):
            b.run_raw(x)
        runs[s.name] = (b, x)
    ms: dict[str, list[float]] = {n: [] for n in runs}
    for _ in range(a.rounds):
        for n, (b, x) in runs.items():
            for _ in range(a.per_round):
                t = time.perf_counter()
                b.run_raw(x)
                ms[n].append((time.perf_counter() - t) * 1000)
    p50 = {n: float(np.median(v)) for n, v in ms.items()}
    rows = []
    for n in p50:
        if n.endswith("-int8") and n[:-4] + "fp32" in p50:
            rows.append({"pair": n[:-5], "int8_ms": p50[n], "fp32_ms": p50[n[:-4] + "fp32"],
                         "int8_over_fp32": p50[n] / p50[n[:-4] + "fp32"], "threads": threads[n]})
            print(f"{n[:-5]:32s} int8 {p50[n]:6.2f} ms  fp32 {p50[n[:-4] + 'fp32']:6.2f} ms  "
                  f"int8/fp32 {rows[-1]['int8_over_fp32']:.2f}", flush=True)
    f = device_facts()
    if a.out:
        a.out.write_text(json.dumps({"device": {k: f[k] for k in ("cpu_model", "cores", "cpu_flags", "int8_isa")},
                                     "rounds": a.rounds, "per_round": a.per_round, "p50_ms": p50, "pairs": rows},
                                    indent=1) + "\n")


if __name__ == "__main__":
    main()
