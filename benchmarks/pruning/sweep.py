#!/usr/bin/env python
"""Pruning sweep: what each channel-pruning ratio costs in AUC and saves in MACs, size and int8 latency.

For every ratio the checkpoint is pruned (``edgecxr.host.prune.prune_checkpoint``: torch-pruning,
channels rounded to 8, batch-norm statistics re-estimated, fine-tuned ``--finetune-epochs``
per step on the split's training part), exported in int8 for rpi (LiteRT), nuc (OpenVINO) and
jetson (ONNX Runtime) with the calibration set, and each bundle is benchmarked with the
project's runner (``edgecxr.device.bench.run``, batch 1, ``--iterations`` timed calls).  The unpruned
checkpoint is measured the same way as ratio 0 (``--no-baseline`` skips it).

Recorded per ratio: MACs at the input size, parameters, fp32 state-dict size, validation AUC
and accuracy of the fp32 model, and per backend the int8 AUC on the same validation images
(from the export check, paired with the float model), the AUC drop, label agreement, int8
model size and latency (p50/p90/mean).

    python benchmarks/pruning/sweep.py runs/mnv2/best.pt --split splits/kermany224.json \\
        --calibration calibration/kermany224 --finetune-epochs 3
    # smoke run on the test data (a minute):
    python benchmarks/pruning/sweep.py tests/data/tiny64.pt --split /tmp/mini-split.json \\
        --calibration tests/data/calib_mini --ratios 0.5 --finetune-epochs 1 --iterations 5 \\
        --work /tmp/sweep --results-dir /tmp/sweep

Writes sweep.json, SWEEP.md and sweep.png into --results-dir (default: next to this script);
pruned checkpoints and bundles go under --work (default runs/prune-sweep).  Finished ratios
(a prune.json in their folder) are reused unless --force.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGETS = ("rpi", "nuc", "jetson")


def _ratios(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None
    bad = [v for v in vals if not 0 < v < 1]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"every ratio must be strictly between 0 and 1 (got {text!r})")
    return sorted(set(vals))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="trained edgecxr checkpoint (best.pt)")
    ap.add_argument("--split", type=Path, required=True, help="split manifest (fine-tune on train, measure on val)")
    ap.add_argument("--calibration", type=Path, required=True, help="int8 calibration set folder")
    ap.add_argument("--ratios", type=_ratios, default=[0.25, 0.5, 0.7], help="comma-separated (default 0.25,0.5,0.7)")
    ap.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs per pruning step")
    ap.add_argument("--steps", type=int, default=1, help="iterative pruning steps per ratio")
    ap.add_argument("--importance", choices=("magnitude", "taylor"), default="magnitude")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    ap.add_argument("--max-train", type=int, default=0, help="cap on fine-tuning images (0 = all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for pruning/fine-tuning (0 = all)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets (default rpi,nuc,jetson)")
    ap.add_argument("--iterations", type=int, default=50, help="timed inference calls per bundle")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up calls per bundle")
    ap.add_argument("--bench-threads", type=int, default=None, help="runtime threads (default: the profile's)")
    ap.add_argument("--no-bench-accuracy", action="store_true",
                    help="time only (the int8 AUC still comes from the export check)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unpruned checkpoint (ratio 0)")
    ap.add_argument("--work", type=Path, default=Path("runs/prune-sweep"), help="pruned checkpoints and bundles")
    ap.add_argument("--results-dir", type=Path, default=HERE, help="where sweep.json, SWEEP.md, sweep.png go")
    ap.add_argument("--device", default=None, help="device name for the records (default: from the CPU)")
    ap.add_argument("--force", action="store_true", help="redo ratios that already have a prune.json")
    return ap.parse_args(argv)


def prune_one(args: argparse.Namespace, ratio: float, log) -> dict[str, Any]:
    from edgecxr.host.prune import prune_checkpoint

    out = args.work / f"ratio-{ratio:.2f}"
    rec_path = out / "prune.json"
    if rec_path.exists() and not args.force:
        log(f"ratio {ratio}: reusing {out}")
        return json.loads(rec_path.read_text())
    return prune_checkpoint(args.checkpoint, out, ratio, steps=args.steps, importance=args.importance,
                            finetune_epochs=args.finetune_epochs, split=args.split, lr=args.lr,
                            threads=args.threads, max_train=args.max_train, force=True, log=log)


def baseline_record(args: argparse.Namespace) -> dict[str, Any]:
    """The unpruned checkpoint, measured like a prune record (ratio 0)."""
    from edgecxr.host.model import load_checkpoint
    from edgecxr.host.prune import count_macs_params, fp32_bytes

    model, meta = load_checkpoint(args.checkpoint)
    size = int(meta["preprocess"]["size"])
    macs, params = count_macs_params(model, size, int(meta["preprocess"].get("channels", 3)))
    return {"checkpoint": str(args.checkpoint), "ratio": 0.0, "size": size,
            "after": {"params": params, "macs": macs, "fp32_bytes": fp32_bytes(model)}}


def export_and_bench(args: argparse.Namespace, ckpt: Path, bundle_root: Path, ev, log) -> dict[str, Any]:
    from edgecxr.device.bench import BenchConfig, run, subject_from_bundle
    from edgecxr.host.export import export_bundle

    out: dict[str, Any] = {}
    for t in [x.strip() for x in args.targets.split(",") if x.strip()]:
        s = export_bundle(ckpt, t, "int8", bundle_root, split=args.split, calibration=args.calibration,
                          force=True, log=lambda *_: None, eval_set=ev, archive=False)
        cfg = BenchConfig(warmup=args.warmup, iterations=args.iterations, threads=args.bench_threads,
                          accuracy=not args.no_bench_accuracy)
        subj = subject_from_bundle(s["bundle"])
        rec = run(subj, None, cfg, args.device, log=lambda *_: None)
        lat = rec["latency_ms"] or {}
        out[t] = {
            "bundle": s["bundle"], "backend": s["backend"], "model_bytes": s["model_bytes"],
            "auc_fp32": s["auc_float"], "auc_int8": s["auc_artifact"], "auc_drop": s["auc_drop"],
            "label_agreement": s["label_agreement"], "accuracy_int8": s["accuracy_artifact"],
            "accuracy_fp32": s["accuracy_float"], "threshold": subj.threshold,
            "n": s["n"],
            "latency_ms": {k: lat.get(k) for k in ("p50", "p90", "p99", "mean", "std", "n")},
            "throughput_ips": lat.get("throughput_ips"), "threads": rec["config"]["threads"],
            "runtime": rec["runtime"],
            "bench_auc_int8": (rec.get("accuracy") or {}).get("auc"),
        }
        log(f"  {t:<7} {s['backend']:<12} int8 {s['model_bytes'] / 1e6:6.2f} MB  AUC {s['auc_artifact']:.4f} "
            f"(drop {s['auc_drop']:+.4f})  p50 {lat.get('p50', float('nan')):.2f} ms")
    return out


def _float_reference(row: dict[str, Any]) -> dict[str, Any] | None:
    """Per-image float probabilities that the export check stored in the row's first bundle."""
    first = next(iter(row["int8"].values()), None)
    if not first:
        return None
    man = json.loads((Path(first["bundle"]) / "manifest.json").read_text())
    return man["reference"]["images"]


def add_paired_vs_unpruned(rows: list[dict[str, Any]]) -> None:
    """Paired DeLong test of each pruned fp32 model against the unpruned one, on identical images."""
    import numpy as np

    from edgecxr.shared.metrics import delong_paired

    if not rows or rows[0]["ratio"] != 0:
        return
    base = _float_reference(rows[0])
    if not base:
        return
    keys = sorted(base)
    y = np.array([base[k]["label"] for k in keys])
    s0 = np.array([base[k]["prob"] for k in keys])
    for r in rows[1:]:
        ref = _float_reference(r)
        if not ref or set(ref) != set(keys):
            continue
        d = delong_paired(y, s0, np.array([ref[k]["prob"] for k in keys]))
        r["fp32_vs_unpruned"] = {"auc_drop": d.diff, "ci_lo": d.ci_lo, "ci_hi": d.ci_hi, "p_value": d.p_value,
                                 "n": len(keys)}


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    targets = sorted({t for r in rows for t in r["int8"]}, key=lambda t: TARGETS.index(t) if t in TARGETS else 9)
    m = doc["machine"]
    lines = [
        "# Channel-pruning sweep (MobileNetV2, int8 per backend)",
        "",
        f"- Date: {doc['date']}",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores, {m['machine']}, {m['os']}, Python {m['python']} "
        f"(flags: {', '.join(m['cpu_flags']) or 'none'})",
        f"- Command: `{doc['command']}`",
        f"- Checkpoint: `{doc['checkpoint']}` (sha256 {doc['checkpoint_sha256'][:12]}), input {doc['size']} px; "
        f"split `{doc['split']}` (validation: n={doc['n_val']}); calibration `{doc['calibration']}`",
        f"- Pruning: {doc['importance']} importance, {doc['steps']} step(s), {doc['finetune_epochs']} fine-tune "
        f"epoch(s) per step, channels multiples of 8, stem conv and classifier outputs kept",
        f"- Latency: `edgecxr.device.bench.run`, batch 1, {doc['warmup']} warm-up + {doc['iterations']} timed calls, "
        "p50 in ms. The rpi/nuc/jetson bundles all run on *this* CPU (LiteRT, OpenVINO, ONNX Runtime CPU); "
        "shared 2-core VMs are noisy: compare within a column.",
        "",
    ]
    hdr = ["ratio", "MACs (M)", "MACs ×", "params (k)", "fp32 MB", "val AUC fp32", "val acc fp32"]
    for t in targets:
        hdr += [f"{t} AUC int8", f"{t} p50 ms"]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "|".join(["---:"] * len(hdr)) + "|")
    base_macs = rows[0]["macs"] if rows and rows[0]["ratio"] == 0 else None
    for r in rows:
        cells = [f"{r['ratio']:.2f}" + (" (unpruned)" if r["ratio"] == 0 else ""),
                 f"{r['macs'] / 1e6:.1f}", f"{r['macs'] / base_macs:.2f}" if base_macs else "-",
                 f"{r['params'] / 1e3:.0f}", f"{r['fp32_bytes'] / 1e6:.2f}",
                 _f(r.get("val_auc_fp32")), _f(r.get("val_acc_fp32"))]
        for t in targets:
            b = r["int8"].get(t) or {}
            cells += [_f(b.get("auc_int8")), _f((b.get("latency_ms") or {}).get("p50"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "AUC drop int8 vs fp32 (same images, paired) and int8 model size:", ""]
    hdr2 = ["ratio"] + [f"{t} drop / MB" for t in targets]
    lines.append("| " + " | ".join(hdr2) + " |")
    lines.append("|" + "|".join(["---:"] * len(hdr2)) + "|")
    for r in rows:
        cells = [f"{r['ratio']:.2f}"]
        for t in targets:
            b = r["int8"].get(t) or {}
            cells.append(f"{_f(b.get('auc_drop'), '+.4f')} / {_f((b.get('model_bytes') or 0) / 1e6, '.2f')}")
        lines.append("| " + " | ".join(cells) + " |")
    paired = [r for r in rows if r.get("fp32_vs_unpruned")]
    if paired:
        lines += ["", "fp32 AUC lost to pruning, paired DeLong test against the unpruned model on the same "
                  "validation images (aim: at most 0.005):", "",
                  "| ratio | AUC drop | 95% CI | p | within 0.005 |", "|---:|---:|---:|---:|:---:|"]
        for r in paired:
            d = r["fp32_vs_unpruned"]
            lines.append(f"| {r['ratio']:.2f} | {d['auc_drop']:+.4f} | [{d['ci_lo']:+.4f}, {d['ci_hi']:+.4f}] | "
                         f"{d['p_value']:.3g} | {'yes' if d['auc_drop'] <= 0.005 else 'no'} |")
    lines += ["", "![AUC vs MACs](sweep.png)", ""]
    return "\n".join(lines)


def _f(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def plot(doc: dict[str, Any], path: Path) -> None:
    from edgecxr.shared.plots import _plt, _save

    plt = _plt()
    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    x = [r["macs"] / 1e6 for r in rows]
    ax.plot(x, [r.get("val_auc_fp32") for r in rows], "o-", label="fp32 (PyTorch)")
    targets = sorted({t for r in rows for t in r["int8"]}, key=lambda t: TARGETS.index(t) if t in TARGETS else 9)
    for t in targets:
        ax.plot(x, [(r["int8"].get(t) or {}).get("auc_int8") for r in rows], "s--", label=f"int8 {t}")
    for r, xi in zip(rows, x, strict=True):
        if r.get("val_auc_fp32") is not None:
            ax.annotate(f"{r['ratio']:.2f}", (xi, r["val_auc_fp32"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    ax.set_xlabel(f"MACs per image at {doc['size']} px (millions)")
    ax.set_ylabel("validation AUC")
    ax.set_title("Pruning ratio: AUC vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from edgecxr.host.export import load_eval_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.errors import EdgeCXRError
    from edgecxr.shared.fsutil import atomic_write_json, atomic_write_text, sha256_file
    from edgecxr.shared.preprocess import PreprocessConfig
    from edgecxr.shared.sysinfo import device_facts

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.time()
    cmd = "python " + shlex.join(["benchmarks/pruning/sweep.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        blob = read_checkpoint(args.checkpoint)
        pp = PreprocessConfig.from_dict(blob["preprocess"])
        ev = load_eval_set(pp, args.split, None)  # one float reference cache for every checkpoint
        rows: list[dict[str, Any]] = []
        jobs: list[float] = ([] if args.no_baseline else [0.0]) + list(args.ratios)
        for ratio in jobs:
            t = time.time()
            log(f"== ratio {ratio:.2f}" + (" (unpruned checkpoint)" if ratio == 0 else ""))
            rec = baseline_record(args) if ratio == 0 else prune_one(args, ratio, log)
            ckpt = Path(rec["checkpoint"])
            a = rec["after"]
            row: dict[str, Any] = {
                "ratio": ratio, "checkpoint": str(ckpt), "macs": a["macs"], "params": a["params"],
                "fp32_bytes": a["fp32_bytes"], "prune_seconds": rec.get("seconds"), "step_log": rec.get("step_log"),
            }
            row["int8"] = export_and_bench(args, ckpt, args.work / f"dist-{ratio:.2f}", ev, log)
            # fp32 figures from the export check: PyTorch on exactly the images the int8 bundles saw
            first = next(iter(row["int8"].values()), {})
            row.update({"val_auc_fp32": first.get("auc_fp32"), "val_acc_fp32": first.get("accuracy_fp32"),
                        "threshold": first.get("threshold")})
            row["seconds"] = round(time.time() - t, 1)
            rows.append(row)
        add_paired_vs_unpruned(rows)
        doc = {
            "kind": "edgecxr-prune-sweep", "schema": 1,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": cmd, "machine": device_facts(),
            "checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
            "split": str(args.split), "n_val": int(len(ev.labels)), "calibration": str(args.calibration),
            "size": pp.size, "importance": args.importance, "steps": args.steps,
            "finetune_epochs": args.finetune_epochs, "lr": args.lr, "iterations": args.iterations,
            "warmup": args.warmup, "rows": rows, "seconds": round(time.time() - t0, 1),
        }
    except EdgeCXRError as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    res = args.results_dir
    res.mkdir(parents=True, exist_ok=True)
    atomic_write_json(res / "sweep.json", doc)
    atomic_write_text(res / "SWEEP.md", markdown(doc))
    try:
        plot(doc, res / "sweep.png")
    except ImportError:
        log("matplotlib not installed: no sweep.png")
    log(markdown(doc))
    log(f"wrote {res / 'sweep.json'}, {res / 'SWEEP.md'}, {res / 'sweep.png'} ({doc['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
