"""Markdown tables of benchmarks/training/sweep*/results.json (the rows of benchmarks/training.md).

    python benchmarks/training/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rows() -> list[tuple[str, dict]]:
    seen, out = set(), []
    for f in sorted(HERE.glob("sweep*/results.json")):
        for name, r in json.loads(f.read_text())["runs"].items():
            if "val" not in r or r["val"]["auc"] < 0.9:  # a broken run (sweep1's EMA without warm-up)
                continue
            if name in seen:
                continue
            seen.add(name)
            out.append((f"{name} ({f.parent.name})", r))
    return out


def main() -> None:
    print("| run | best epoch / run | val AUC | val ECE | T | stress AUC mean | worst (where) | held-out families |"
          " Youden: stress sens / spec / acc (worst acc) | sens=0.95: stress sens / spec / acc (worst acc) |")
    print("|---|---|---:|---:|---:|---:|---|---:|---|---|")
    for name, r in rows():
        v, s = r["val"], r["summary"]
        ep = f"{r.get('best_epoch', '-')} / {r.get('epochs_run', '-')}" if "best_epoch" in r else "-"
        print(f"| {name} | {ep} | {v['auc']:.4f} | {v['ece']:.3f} | {v['temperature']:.2f} | "
              f"{s['stress_auc_mean']:.4f} | {s['stress_auc_worst']:.4f} ({s['stress_auc_worst_at']}) | "
              f"{s['held_out_auc_mean']:.4f} | "
              f"{s['stress_sens@youden_mean']:.3f} / {s['stress_spec@youden_mean']:.3f} / "
              f"{s['stress_acc@youden_mean']:.3f} ({s['stress_acc@youden_worst']:.3f}) | "
              f"{s['stress_sens@sens=0.95_mean']:.3f} / {s['stress_spec@sens=0.95_mean']:.3f} / "
              f"{s['stress_acc@sens=0.95_mean']:.3f} ({s['stress_acc@sens=0.95_worst']:.3f}) |")


if __name__ == "__main__":
    main()
