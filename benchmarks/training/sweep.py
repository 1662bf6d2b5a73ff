"""Training-recipe sweep: several `edgecxr train` runs side by side, then every best.pt scored
on patient-grouped validation and on a shift stress set built from the same validation images.

Made for one short call on a GPU machine (all runs share the GPU, each its own process), and
runs the same on CPU with small settings (the test of this script):

    python benchmarks/training/sweep.py --out /tmp/sweep --runs paper:0,robust:0 \
        --epochs 2 --size 64 --max-train 96 --max-val 64 --max-stress 32 --device cpu

What it measures for each run and for the shipped reference model (models/mnv2-ref.pt):
- validation (the split's val part): AUC, loss, expected calibration error (ECE) raw and after
  temperature scaling fitted on validation, thresholds by Youden and by sensitivity 0.95;
- stress: every corruption of `edgecxr.shared.stress` at the chosen severities applied to the
  validation images (the same deterministic per-image draws as `edgecxr data stress`): AUC,
  ECE, and sensitivity/specificity/accuracy at each validation threshold, to see which
  operating-point rule transfers under shift.  JPEG, resampling and Poisson (quantum) noise are
  not in any training recipe's augmentation, so their rows measure shift the model never saw.
Nothing here reads the official test split.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

HELD_OUT_FAMILIES = ("jpeg", "resample", "noise")  # not in any training augmentation (noise: Poisson + read noise)


def _corrupt_chunk(args):
    from edgecxr.shared import stress

    cache, shas, corruption, severity, seed = args
    out = np.empty_like(cache)
    fn = stress.CORRUPTIONS[corruption]
    for i, (g, sha) in enumerate(zip(cache, shas, strict=True)):
        out[i] = fn(g.astype(np.float32), severity, stress.image_rng(seed, sha, corruption, severity))
    return out


def build_stress(cache: np.ndarray, shas: list[str], severities, workers: int, seed: int = 0) -> dict[str, np.ndarray]:
    from edgecxr.shared import stress

    jobs = [(c, s) for c in stress.CORRUPTIONS for s in severities]
    with ProcessPoolExecutor(workers) as ex:
        arrays = list(ex.map(_corrupt_chunk, [(cache, shas, c, s, seed) for c, s in jobs]))
    return {f"{c}-s{s}": a for (c, s), a in zip(jobs, arrays, strict=True)}


def score(name: str, ckpt: Path, xva, yva, stress_sets: dict[str, np.ndarray], device: str) -> dict:
    import torch

    from edgecxr.host.model import load_checkpoint
    from edgecxr.host.train import predict_cache
    from edgecxr.shared.metrics import (
        binary_metrics,
        choose_threshold,
        expected_calibration_error,
        fit_temperature,
        roc_auc,
    )
    from edgecxr.shared.preprocess import PreprocessConfig

    model, meta = load_checkpoint(ckpt)
    pp = PreprocessConfig(size=xva.shape[-1])
    dev = torch.device(device)
    model = model.to(dev)
    t0 = time.time()
    _, pv = predict_cache(model, xva, pp, bs=256, device=dev)
    eps = 1e-7
    nll = float(-(yva * np.log(np.clip(pv, eps, 1)) + (1 - yva) * np.log(np.clip(1 - pv, eps, 1))).mean())
    temp = fit_temperature(yva, pv)
    from edgecxr.shared.metrics import apply_temperature

    thr = {"youden": choose_threshold(yva, pv, "youden"), "sens=0.95": choose_threshold(yva, pv, "sensitivity", 0.95)}
    res = {"name": name, "checkpoint": str(ckpt),
           "val": {"n": len(yva), "auc": roc_auc(yva, pv), "nll": nll, "ece": expected_calibration_error(yva, pv),
                   "temperature": temp, "ece_temp": expected_calibration_error(yva, apply_temperature(pv, temp)),
                   "thresholds": thr,
                   **{f"acc@{k}": binary_metrics(yva, pv, v).accuracy for k, v in thr.items()}},
           "stress": {}}
    for key, arr in stress_sets.items():
        _, ps = predict_cache(model, arr, pp, bs=256, device=dev)
        row = {"auc": roc_auc(yva, ps), "ece": expected_calibration_error(yva, ps),
               "ece_temp": expected_calibration_error(yva, apply_temperature(ps, temp))}
        for k, v in thr.items():
            bm = binary_metrics(yva, ps, v)
            row[k] = {"acc": bm.accuracy, "sens": bm.sensitivity, "spec": bm.specificity}
        res["stress"][key] = row
    res["seconds_scoring"] = time.time() - t0
    st = res["stress"]
    if st:
        aucs = {k: v["auc"] for k, v in st.items()}
        res["summary"] = {
            "stress_auc_mean": float(np.mean(list(aucs.values()))),
            "stress_auc_worst": min(aucs.values()),
            "stress_auc_worst_at": min(aucs, key=aucs.get),
            "held_out_auc_mean": float(np.mean([v for k, v in aucs.items() if k.split("-s")[0] in HELD_OUT_FAMILIES])),
            "stress_ece_mean": float(np.mean([v["ece"] for v in st.values()])),
            **{f"stress_{m}@{k}_mean": float(np.mean([v[k][m] for v in st.values()]))
               for k in thr for m in ("acc", "sens", "spec")},
            **{f"stress_{m}@{k}_worst": float(np.min([v[k][m] for v in st.values()]))
               for k in thr for m in ("acc", "sens", "spec")},
        }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default=str(ROOT / "splits/kermany224.json"))
    ap.add_argument("--runs", default="paper:0,paper:1,acquisition:0,acquisition:1,robust:0,robust:1,robust-mixup:0,robust-mixup:1",
                    help="RECIPE:SEED,...")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per training process")
    ap.add_argument("--max-train", type=int, default=0)
    ap.add_argument("--max-val", type=int, default=0)
    ap.add_argument("--max-stress", type=int, default=0, help="cap on validation images in the stress set (0 = all)")
    ap.add_argument("--severities", default="2,3")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--train-deadline", type=float, default=0, help="seconds; runs still going are stopped (0 = none)")
    ap.add_argument("--reference", default=str(ROOT / "models/mnv2-ref.pt"))
    ap.add_argument("--score", action="append", default=[], metavar="NAME=CHECKPOINT",
                    help="also score this checkpoint (with --runs '' only score, no training)")
    a = ap.parse_args()

    import torch

    from edgecxr.host.train import _cap, load_cache
    from edgecxr.shared.data import SplitManifest

    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(a.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    procs = {}
    for spec in [r for r in a.runs.split(",") if r]:
        recipe, seed = spec.split(":")
        name = f"{recipe}-s{seed}"
        rd = out / "runs" / name
        cmd = [sys.executable, "-m", "edgecxr", "train", "--split", a.split, "--out", str(rd), "--recipe", recipe,
               "--seed", seed, "--epochs", str(a.epochs), "--patience", str(a.patience), "--batch-size", str(a.batch_size),
               "--lr", str(a.lr), "--size", str(a.size), "--device", device, "--threads", str(a.threads),
               "--max-train", str(a.max_train), "--max-val", str(a.max_val)]
        rd.parent.mkdir(parents=True, exist_ok=True)
        log = open(out / "runs" / f"{name}.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "EDGECXR_NO_PROGRESS": "1"}
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                        start_new_session=True), log, time.time())
    print(f"started {len(procs)} runs on {device}", flush=True)

    split = SplitManifest.read(a.split)
    val_items = _cap(split.subset("val"), a.max_val, 0)
    xva = load_cache(split, val_items, a.size)
    yva = np.array([it.label for it in val_items])
    sidx = np.arange(len(val_items))
    if a.max_stress and a.max_stress < len(sidx):
        sidx = np.sort(np.random.default_rng(0).choice(len(sidx), a.max_stress, replace=False))
    sevs = [int(s) for s in a.severities.split(",") if s]
    t0 = time.time()
    stress_sets = build_stress(xva[sidx], [val_items[i].sha256 for i in sidx], sevs, a.workers)
    print(f"stress set: {len(stress_sets)} x {len(sidx)} images in {time.time() - t0:.0f}s", flush=True)

    status = {}
    while procs:
        for name, (p, log, ts) in list(procs.items()):
            rc = p.poll()
            late = a.train_deadline and time.time() - t_start > a.train_deadline
            if rc is None and late:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
                rc = "stopped at the deadline"
            if rc is not None:
                status[name] = {"rc": rc, "seconds": time.time() - ts}
                log.close()
                del procs[name]
                print(f"{name}: {rc} after {time.time() - ts:.0f}s", flush=True)
        time.sleep(2)

    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__,
               "cpu_count": os.cpu_count(), "args": vars(a), "runs": {}, "stress_images": int(len(sidx)),
               "severities": sevs, "held_out_families": list(HELD_OUT_FAMILIES)}
    ystress = yva[sidx]
    scored = [("shipped-mnv2-ref", Path(a.reference))] + [(n, out / "runs" / n / "best.pt") for n in status]
    scored += [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in a.score]
    for name, ck in scored:
        if not ck.exists():
            results["runs"][name] = {"error": "no best.pt", **status.get(name, {})}
            continue
        try:
            r = score(name, ck, xva, yva, {}, device)
            r2 = score(name, ck, xva[sidx], ystress, stress_sets, device) if stress_sets else {}
            r["stress"], r["summary"] = r2.get("stress", {}), r2.get("summary", {})
            rd = ck.parent
            if (rd / "metrics.json").exists():
                m = json.loads((rd / "metrics.json").read_text())
                r["best_epoch"], r["epochs_run"], r["wall_seconds"] = m["best_epoch"], m["epochs_run"], m["wall_seconds"]
            r.update(status.get(name, {}))
            results["runs"][name] = r
            s = r.get("summary", {})
            print(f"{name}: val AUC {r['val']['auc']:.4f} ECE {r['val']['ece']:.3f} T {r['val']['temperature']:.2f} | "
                  f"stress AUC mean {s.get('stress_auc_mean', float('nan')):.4f} worst {s.get('stress_auc_worst', float('nan')):.4f} "
                  f"held-out {s.get('held_out_auc_mean', float('nan')):.4f} | spec@youden {s.get('stress_spec@youden_mean', float('nan')):.3f} "
                  f"spec@sens95 {s.get('stress_spec@sens=0.95_mean', float('nan')):.3f}", flush=True)
        except Exception as e:  # keep the other runs' scores
            results["runs"][name] = {"error": f"{e.__class__.__name__}: {e}", **status.get(name, {})}
            print(f"{name}: scoring failed: {e}", flush=True)
    results["seconds_total"] = time.time() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"done in {time.time() - t_start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
