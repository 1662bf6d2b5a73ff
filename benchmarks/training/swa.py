"""Stochastic weight averaging (SWA) fine-tune of a trained checkpoint, scored like the sweep.

Starts from a checkpoint (default the shipped models/mnv2-ref.pt), trains K more epochs at a
constant learning rate with the same augmentation recipe, averages the weights at the end of
each epoch (Izmailov et al. 2018, torch.optim.swa_utils), re-estimates batch-norm statistics on
the (unaugmented) training images, then scores the average -- and the start checkpoint, side by
side -- on patient-grouped validation and on the shift stress set (every corruption at
severities 2 and 3 applied to every validation image: `benchmarks/training/sweep.py`'s score).
Nothing here reads the official test split.

    python benchmarks/training/swa.py --out runs/swa --epochs 8 --lr 2e-4        # hours on 2 CPU cores
    python benchmarks/training/swa.py --out /tmp/swa --epochs 1 --size 64 --max-train 64 --max-val 64 --max-stress 16

Writes OUT/swa.pt (an edgecxr checkpoint, threshold by the start checkpoint's rule on validation),
OUT/snap-eK.pt per epoch, OUT/history.csv and OUT/results.json. `--resume` picks up after the last
finished epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "training"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", default=str(ROOT / "models/mnv2-ref.pt"))
    ap.add_argument("--split", default=str(ROOT / "splits/kermany224.json"))
    ap.add_argument("--recipe", default="acquisition")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4, help="constant Adam learning rate during SWA")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=0)
    ap.add_argument("--max-val", type=int, default=0)
    ap.add_argument("--max-stress", type=int, default=0)
    ap.add_argument("--severities", default="2,3")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()

    import torch
    from sweep import build_stress, score
    from torch import nn
    from torch.optim.swa_utils import AveragedModel

    from edgecxr.host import train as T
    from edgecxr.host.model import build_from_arch, read_checkpoint, save_checkpoint
    from edgecxr.shared.data import SplitManifest
    from edgecxr.shared.metrics import choose_threshold
    from edgecxr.shared.preprocess import PreprocessConfig

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = T.apply_recipe(T.TrainConfig(split=a.split, out=str(out)), a.recipe)
    T.seed_everything(a.seed)
    split = SplitManifest.read(a.split)
    tr = T._cap(split.subset("train"), a.max_train, a.seed)
    va = T._cap(split.subset("val"), a.max_val, a.seed)
    t0 = time.time()
    xtr = T.load_cache(split, tr, a.size)
    xva = T.load_cache(split, va, a.size)
    ytr = torch.tensor([it.label for it in tr])
    yva = np.array([it.label for it in va])
    print(f"data: {len(tr)} train / {len(va)} val at {a.size}px in {time.time() - t0:.0f}s", flush=True)
    pp = PreprocessConfig(size=a.size)

    blob = read_checkpoint(a.init)
    arch = blob["arch"]
    model = build_from_arch(arch, blob["state_dict"])
    swa = AveragedModel(model, use_buffers=False)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, weight_decay=cfg.weight_decay)
    counts = torch.bincount(ytr, minlength=2).float()
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (2 * counts))
    gen = torch.Generator().manual_seed(a.seed)
    start = 0
    state_path = out / "state.pt"
    if a.resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        swa.load_state_dict(st["swa"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        start = st["epoch"] + 1
        print(f"resumed after epoch {start}", flush=True)
    hist = out / "history.csv"
    if start == 0:
        hist.write_text("epoch,train_loss,seconds\n")
    bs = a.batch_size
    for ep in range(start, a.epochs):
        te = time.time()
        model.train()
        perm = torch.randperm(len(tr), generator=gen)
        tot, seen = 0.0, 0
        for s in range(math.ceil(len(tr) / bs)):
            idx = perm[s * bs:(s + 1) * bs]
            if len(idx) < 2:
                continue
            xb = torch.from_numpy(xtr[idx.numpy()].astype(np.float32))
            xb = T.augment(xb, cfg.rotation, cfg.hflip, gen, cfg.zoom, cfg.translate)
            xb = T.photometric(xb, gen, cfg.intensity, cfg.noise, cfg.blur)
            loss = loss_fn(model(T.normalize_torch(xb, pp)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.item() * len(idx)
            seen += len(idx)
        swa.update_parameters(model)
        save_checkpoint(out / f"snap-e{ep + 1}.pt", model, arch, pp, None, {"swa_epoch": ep + 1})
        torch.save({"model": model.state_dict(), "swa": swa.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "epoch": ep}, str(state_path) + ".tmp")
        Path(str(state_path) + ".tmp").replace(state_path)
        with hist.open("a") as f:
            f.write(f"{ep + 1},{tot / max(seen, 1):.5f},{time.time() - te:.1f}\n")
        print(f"epoch {ep + 1}/{a.epochs}: loss {tot / max(seen, 1):.4f} ({time.time() - te:.0f}s)", flush=True)

    # batch-norm statistics of the average, on the training images as the model sees them at inference
    avg = swa.module
    for m in avg.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    avg.train()
    with torch.no_grad():
        for s in range(0, len(tr), bs):
            avg(T.normalize_torch(torch.from_numpy(xtr[s:s + bs].astype(np.float32)), pp))
    avg.eval()
    _, pv = T.predict_cache(avg, xva, pp)
    rule = blob.get("threshold_rule") or "sensitivity=0.95"
    thr = choose_threshold(yva, pv, "sensitivity", 0.95)
    save_checkpoint(out / "swa.pt", avg, arch, pp, thr, {"swa": {"init": a.init, "epochs": a.epochs, "lr": a.lr,
                                                                  "recipe": a.recipe, "seed": a.seed},
                                                         "threshold_rule": "sensitivity=0.95"})
    print(f"swa.pt written (threshold {thr:.4f}, start checkpoint's rule {rule})", flush=True)

    sidx = np.arange(len(va))
    if a.max_stress and a.max_stress < len(sidx):
        sidx = np.sort(np.random.default_rng(0).choice(len(sidx), a.max_stress, replace=False))
    sevs = [int(s) for s in a.severities.split(",") if s]
    stress_sets = build_stress(xva[sidx], [va[i].sha256 for i in sidx], sevs, a.workers)
    res = {"args": vars(a), "runs": {}}
    snaps = [("start", Path(a.init)), ("swa", out / "swa.pt")] + [
        (f"snap-e{k}", out / f"snap-e{k}.pt") for k in (a.epochs,)]
    for name, ck in snaps:
        r = score(name, ck, xva, yva, {}, "cpu")
        ys = yva[sidx]
        r2 = score(name, ck, xva[sidx], ys, stress_sets, "cpu")
        r["stress"], r["summary"] = r2["stress"], r2.get("summary", {})
        res["runs"][name] = r
        s = r["summary"]
        print(f"{name}: val AUC {r['val']['auc']:.4f} ECE {r['val']['ece']:.3f}; stress AUC mean "
              f"{s.get('stress_auc_mean', float('nan')):.4f} worst {s.get('stress_auc_worst', float('nan')):.4f} "
              f"acc@sens=0.95 mean {s.get('stress_acc@sens=0.95_mean', float('nan')):.3f}", flush=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
