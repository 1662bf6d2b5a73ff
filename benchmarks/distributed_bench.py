"""Training throughput with 1 process and with 2 torchrun processes, same settings, one run.

    PYTHONPATH=. .venv/bin/python benchmarks/distributed_bench.py --out runs/ddp-bench [--repeats 2]

Each configuration trains the same stratified subset (``--max-train``) of splits/kermany224.json for
``--epochs`` epochs with the project's own command; images per second are the training images one
epoch went through (``n`` for one process, ``2 * floor(n / 2)`` for two: DistributedSampler drops the
odd one) over that epoch's wall time from history.csv (training, plus validation on ``--max-val``
images and rank 0 writing last.pt/best.pt). The last epoch counts (the first includes warm-up).
Configurations run one after another, interleaved over the repeats; prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/ddp-bench"))
    ap.add_argument("--split", default=str(ROOT / "splits" / "kermany224.json"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--max-train", type=int, default=320)
    ap.add_argument("--max-val", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    common = ["train", "--split", a.split, "--size", str(a.size), "--width", str(a.width),
              "--max-train", str(a.max_train), "--max-val", str(a.max_val), "--batch-size", str(a.batch_size),
              "--epochs", str(a.epochs), "--patience", str(a.epochs + 1)]
    py = sys.executable
    configs = {
        "1 process, 2 threads (plain `edgecxr train`)": lambda out: [py, "-m", "edgecxr", *common, "--out", out,
                                                                      "--threads", "2"],
        "1 process, 1 thread (plain `edgecxr train`)": lambda out: [py, "-m", "edgecxr", *common, "--out", out,
                                                                     "--threads", "1"],
        "2 processes x 1 thread (torchrun, gloo)": lambda out: [py, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                                                "--master_port", str(free_port()), "-m", "edgecxr",
                                                                *common, "--out", out, "--threads", "1"],
    }
    rows = []
    for rep in range(a.repeats):
        for i, (name, cmd) in enumerate(configs.items()):
            out = a.out / f"r{rep}-c{i}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.time()
            p = subprocess.run(cmd(str(out)), capture_output=True, text=True, env=os.environ)
            wall = time.time() - t
            if p.returncode != 0:
                sys.exit(f"{name} failed:\n{p.stderr[-2000:]}")
            hist = list(csv.DictReader((out / "history.csv").open()))
            n = int(next(ln for ln in p.stderr.splitlines() if ln.startswith("data: ")).split()[1])
            seen = n if "torchrun" not in name else 2 * (n // 2)
            secs = [float(r["seconds"]) for r in hist]
            rows.append((rep, name, seen, secs, wall))
            print(f"repeat {rep}: {name}: {seen} images/epoch, epochs {', '.join(f'{s:.1f}s' for s in secs)}, "
                  f"{seen / secs[-1]:.1f} img/s (last epoch), command wall {wall:.0f}s", flush=True)
    print("\n| repeat | configuration | images/epoch | epoch seconds | img/s (last epoch) |\n|---|---|---|---|---|")
    for rep, name, seen, secs, _ in rows:
        print(f"| {rep} | {name} | {seen} | {' / '.join(f'{s:.1f}' for s in secs)} | {seen / secs[-1]:.1f} |")


if __name__ == "__main__":
    main()
