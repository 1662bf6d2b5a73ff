"""Where the operating point sits, and how int8 flips fall around it, from a gate's --details JSON.

For each int8 bundle of a gate run (`edgecxr gate ... --stress DIR --details gate.json`), on its
reference images and on the stress set pooled: how many images have an fp32 probability within
+-MARGIN of the shipped threshold, how many calls int8 flips among them and farther out, and in
which direction (int8 higher or lower than fp32), by true label.

    python benchmarks/quantization/near_threshold.py dist/ci/gate.json [--margin 0.05] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from edgecxr.device.gate import near_threshold

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("details", type=Path)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    d = json.loads(a.details.read_text())
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in d["pairs"]:
        kind = "stress (pooled)" if str(p["images"]).startswith("stress:") else str(p["images"])
        groups.setdefault((p["bundle"], kind), []).append(p)
    lines = [f"Near-threshold calls (|p fp32 - threshold| <= {a.margin:g}) from `{a.details}`", "",
             "| bundle | images | threshold | n | near | share near | flips near (int8 up / down; NORMAL / PNEUMONIA) "
             "| flips farther out | flip rate near [95% CI] |",
             "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for (bundle, kind), ps in groups.items():
        y = np.concatenate([np.asarray(p["labels"]) for p in ps])
        pr = np.concatenate([np.asarray(p["p_fp32"], dtype=float) for p in ps])
        pq = np.concatenate([np.asarray(p["p"], dtype=float) for p in ps])
        thr = float(ps[0]["threshold"])
        nt = near_threshold(y, pr, pq, thr, a.margin)
        lo, hi = nt["wilson95"]
        lines.append(f"| {bundle} | {kind} | {thr:.3f} | {nt['of']} | {nt['n']} | {nt['n'] / max(1, nt['of']):.3f} | "
                     f"{nt['flips']} ({nt['up']} / {nt['down']}; {nt['normal_flips']} / {nt['pneumonia_flips']}) | "
                     f"{nt['flips_outside']} | {nt['rate']:.3f} [{lo:.3f}, {hi:.3f}] |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
