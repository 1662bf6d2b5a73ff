"""Training MobileNetV2 on a recorded split (host side, torch).

Recipe (the paper's): Adam, cosine annealing, early stopping on validation
loss, random rotations and horizontal flips, class weighting for the ~1:3
imbalance.  Every knob is a named field of ``TrainConfig``; a run directory
holds config.json, history.csv, last.pt, best.pt, metrics.json,
val_predictions.csv and the PNG curves.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import LABELS, __version__
from .data import Item, SplitManifest
from .errors import EdgeCXRError
from .fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from .metrics import choose_threshold, softmax_pos, summarize
from .model import (
    build_from_arch,
    build_mobilenet_v2,
    describe_arch,
    imagenet_mobilenet_v2,
    load_init_weights,
    read_checkpoint,
    save_checkpoint,
)
from .preprocess import PreprocessConfig, resize_grey


@dataclass
class TrainConfig:
    split: str
    out: str
    size: int = 224
    width_mult: float = 1.0
    init: str = "none"  # none | imagenet | PATH
    freeze_blocks: int = 0  # freeze the first K blocks of model.features
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    min_lr: float = 1e-6
    patience: int = 5
    rotation: float = 10.0  # degrees, uniform in [-r, r]
    hflip: bool = True
    class_weighting: bool = True
    label_smoothing: float = 0.0
    seed: int = 0
    threads: int = 0  # 0 = all cores
    max_train: int = 0  # 0 = all; >0 caps the training images (quick runs)
    max_val: int = 0
    threshold_rule: str = "youden"
    data_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _cap(items: list[Item], n: int, seed: int) -> list[Item]:
    if n <= 0 or n >= len(items):
        return items
    # stratified cap: keep class proportions
    rng = np.random.default_rng(seed)
    out: list[Item] = []
    for lab in (0, 1):
        grp = [it for it in items if it.label == lab]
        k = max(1, int(round(n * len(grp) / len(items))))
        idx = sorted(rng.choice(len(grp), size=min(k, len(grp)), replace=False))
        out += [grp[i] for i in idx]
    return out


def load_cache(split: SplitManifest, items: list[Item], size: int, progress=None) -> np.ndarray:
    """Grey [0,1] images resized to size, as float16 N x H x W (the numpy preprocessing)."""
    arr = np.empty((len(items), size, size), dtype=np.float16)
    for i, it in enumerate(items):
        arr[i] = resize_grey(split.load(it), size)
        if progress:
            progress(i + 1)
    return arr


def normalize_torch(x: torch.Tensor, pp: PreprocessConfig) -> torch.Tensor:
    """N x H x W grey [0,1] -> N x C x H x W; same arithmetic as preprocess.normalize."""
    mean = torch.tensor(pp.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(pp.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.unsqueeze(1).float() - mean) / std


def augment(x: torch.Tensor, rotation: float, hflip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (bilinear, zero fill) and horizontal flip of N x H x W."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation)
    cos, sin = torch.cos(ang), torch.sin(ang)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, (n, 1, x.shape[1], x.shape[2]), align_corners=False)
    return F.grid_sample(x.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(1)


def freeze_first_blocks(model: nn.Module, k: int) -> None:
    for i, block in enumerate(model.features):
        if i < k:
            for p in block.parameters():
                p.requires_grad_(False)


@torch.no_grad()
def predict_cache(model: nn.Module, cache: np.ndarray, pp: PreprocessConfig, bs: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x 2, p(pneumonia) N) for a cached grey array."""
    model.eval()
    outs = []
    for i in range(0, len(cache), bs):
        xb = normalize_torch(torch.from_numpy(cache[i:i + bs].astype(np.float32)), pp)
        outs.append(model(xb).float())
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, 2), np.float32)
    return logits, softmax_pos(logits)


def env_record() -> dict[str, Any]:
    import torchvision

    return {
        "edgecxr": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def make_model(cfg: TrainConfig, log) -> tuple[nn.Module, dict]:
    init = cfg.init
    if init == "imagenet":
        if cfg.width_mult != 1.0:
            raise EdgeCXRError("--init imagenet needs --width 1.0 (torchvision ships weights only for 1.0)")
        model = imagenet_mobilenet_v2(2)
        info = {"init": "imagenet", "weights": "MobileNet_V2_Weights.IMAGENET1K_V1"}
    elif init == "none":
        model = build_mobilenet_v2(cfg.width_mult, 2)
        info = {"init": "none"}
    else:
        p = Path(init)
        try:
            blob = read_checkpoint(p)
            model = build_from_arch(blob["arch"], blob["state_dict"])
            info = {"init": str(p), "sha256": sha256_file(p), "from_checkpoint": True}
            if blob["arch"].get("pruned"):
                info["arch"] = blob["arch"]
        except EdgeCXRError:
            model = build_mobilenet_v2(cfg.width_mult, 2)
            skipped = load_init_weights(model, p)
            info = {"init": str(p), "sha256": sha256_file(p), "skipped_keys": skipped}
            if skipped:
                log(f"init: {len(skipped)} tensors of {p} did not fit and were skipped (e.g. {skipped[0]})")
    return model, info


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print, show_progress: bool = True):
        self.cfg = cfg
        self.log = log
        self.show_progress = show_progress
        self.out = Path(cfg.out)

    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        out = self.out
        last_path = out / "last.pt"
        if resume:
            if not last_path.exists():
                raise EdgeCXRError("nothing to resume: no last.pt in the run folder", out)
            saved_cfg = json.loads((out / "config.json").read_text())["train"]
            saved_cfg.pop("extra", None)
            cfg = self.cfg = TrainConfig(**{**saved_cfg, "epochs": cfg.epochs or saved_cfg["epochs"]})
        elif out.exists() and any(out.glob("*.pt")):
            raise EdgeCXRError("run folder already has checkpoints; use --resume to continue or another --out", out)
        out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        split = SplitManifest.read(cfg.split, cfg.data_root)
        pp = PreprocessConfig(size=cfg.size)
        train_items = _cap(split.subset("train"), cfg.max_train, cfg.seed)
        val_items = _cap(split.subset("val"), cfg.max_val, cfg.seed)
        if not train_items or not val_items:
            raise EdgeCXRError("split has an empty train or val part", cfg.split)
        for name, its in (("train", train_items), ("val", val_items)):
            if len({it.label for it in its}) < 2:
                raise EdgeCXRError(f"the {name} part of the split has a single class", cfg.split)

        self.log(f"data: {len(train_items)} train / {len(val_items)} val images at {cfg.size}px "
                 f"(split {cfg.split}, seed {split.seed})")
        t0 = time.time()
        xtr = self._cache(split, train_items, cfg.size, "loading train images")
        xva = self._cache(split, val_items, cfg.size, "loading val images")
        ytr = torch.tensor([it.label for it in train_items])
        yva = np.array([it.label for it in val_items])
        self.log(f"data cached in {time.time() - t0:.1f}s")

        model, init_info = make_model(cfg, self.log)
        arch = init_info.get("arch") or describe_arch(model, cfg.width_mult)
        freeze_first_blocks(model, cfg.freeze_blocks)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1), eta_min=cfg.min_lr)
        counts = torch.bincount(ytr, minlength=2).float()
        weights = (counts.sum() / (2 * counts)) if cfg.class_weighting else torch.ones(2)
        loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        val_loss_fn = nn.CrossEntropyLoss(weight=weights)

        start_epoch, best_loss, bad_epochs, history = 0, math.inf, 0, []
        gen = torch.Generator().manual_seed(cfg.seed)
        if resume:
            blob = torch.load(last_path, map_location="cpu", weights_only=False)
            model.load_state_dict(blob["state_dict"])
            opt.load_state_dict(blob["optimizer"])
            sched.load_state_dict(blob["scheduler"])
            gen.set_state(blob["rng"]["torch_gen"])
            torch.set_rng_state(blob["rng"]["torch"])
            start_epoch = blob["epoch"] + 1
            best_loss, bad_epochs = blob["best_loss"], blob["bad_epochs"]
            history = blob["history"]
            self.log(f"resumed from {last_path} after epoch {blob['epoch'] + 1}")
        else:
            atomic_write_json(out / "config.json", {
                "train": asdict(cfg), "preprocess": pp.to_dict(), "arch": arch, "init": init_info,
                "split_sha256": sha256_file(cfg.split), "class_weights": weights.tolist(),
                "env": env_record(),
            })

        n = len(train_items)
        steps = math.ceil(n / cfg.batch_size)
        for epoch in range(start_epoch, cfg.epochs):
            if bad_epochs >= cfg.patience:
                break
            t_ep = time.time()
            model.train()
            perm = torch.randperm(n, generator=gen)
            tot, seen = 0.0, 0
            with self._bar(steps, f"epoch {epoch + 1}/{cfg.epochs}") as step:
                for s in range(steps):
                    idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                    if len(idx) < 2:  # BatchNorm needs > 1 sample
                        continue
                    xb = torch.from_numpy(xtr[idx.numpy()].astype(np.float32))
                    xb = augment(xb, cfg.rotation, cfg.hflip, gen)
                    xb = normalize_torch(xb, pp)
                    loss = loss_fn(model(xb), ytr[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += loss.item() * len(idx)
                    seen += len(idx)
                    step()
            sched.step()
            logits, prob = predict_cache(model, xva, pp)
            vloss = float(val_loss_fn(torch.from_numpy(logits), torch.from_numpy(yva)))
            from .metrics import binary_metrics, roc_auc

            vauc = roc_auc(yva, prob)
            vacc = binary_metrics(yva, prob, 0.5).accuracy
            row = {"epoch": epoch + 1, "train_loss": tot / max(seen, 1), "val_loss": vloss,
                   "val_auc": vauc, "val_acc@0.5": vacc, "lr": opt.param_groups[0]["lr"],
                   "seconds": time.time() - t_ep}
            history.append(row)
            improved = vloss < best_loss - 1e-6
            if improved:
                best_loss, bad_epochs = vloss, 0
                save_checkpoint(out / "best.pt", model, arch, pp, None,
                                {"epoch": epoch + 1, "val_loss": vloss, "val_auc": vauc, "train": asdict(cfg)})
            else:
                bad_epochs += 1
            self._write_history(history)
            self._save_last(model, opt, sched, gen, epoch, best_loss, bad_epochs, history, arch, pp)
            self.log(f"epoch {epoch + 1}: train_loss {row['train_loss']:.4f} val_loss {vloss:.4f} "
                     f"val_auc {vauc:.4f} val_acc@0.5 {vacc:.4f} ({row['seconds']:.0f}s)"
                     + (" *best" if improved else f" (no improvement {bad_epochs}/{cfg.patience})"))
        stopped_early = bad_epochs >= cfg.patience and len(history) < cfg.epochs
        return self.finish(split, val_items, xva, yva, pp, history, stopped_early, time.time() - t0)

    def finish(self, split, val_items, xva, yva, pp, history, stopped_early, wall) -> dict[str, Any]:
        from .model import load_checkpoint

        out, cfg = self.out, self.cfg
        model, meta = load_checkpoint(out / "best.pt")
        _, prob = predict_cache(model, xva, pp)
        method, target = _threshold_rule(cfg.threshold_rule)
        thr = choose_threshold(yva, prob, method, target)
        metrics = summarize(yva, prob, thr)
        # re-save best.pt with its operating threshold
        blob = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
        blob["threshold"] = thr
        blob["threshold_rule"] = cfg.threshold_rule
        blob["val_metrics"] = metrics
        buf = io.BytesIO()
        torch.save(blob, buf)
        atomic_write_bytes(out / "best.pt", buf.getvalue())
        result = {
            "split": "val", "threshold_rule": cfg.threshold_rule, "best_epoch": meta.get("epoch"),
            "epochs_run": len(history), "stopped_early": stopped_early,
            "wall_seconds": wall, "metrics": metrics, "note": "validation split, not the held-out test split",
        }
        atomic_write_json(out / "metrics.json", result)
        lines = ["sha256,path,label,prob"] + [f"{it.sha256},{it.path},{it.label},{p:.6f}"
                                               for it, p in zip(val_items, prob, strict=True)]
        atomic_write_text(out / "val_predictions.csv", "\n".join(lines) + "\n")
        try:
            from .plots import plot_history, plot_roc

            plot_history(history, out / "curves.png")
            plot_roc({"MobileNetV2 fp32 (val)": (yva, prob)}, out / "roc_val.png", thr_points={"MobileNetV2 fp32 (val)": thr})
        except ImportError:
            self.log("matplotlib not installed: no PNG plots")
        self.log(format_metrics(metrics, "validation"))
        return result

    def _cache(self, split, items, size, desc):
        with self._bar(len(items), desc) as step:
            return load_cache(split, items, size, lambda i: step())

    def _bar(self, total: int, desc: str):
        from .progress import bar

        return bar(total, desc, enabled=self.show_progress)

    def _write_history(self, history: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.out / "history.csv", buf.getvalue())

    def _save_last(self, model, opt, sched, gen, epoch, best_loss, bad_epochs, history, arch, pp) -> None:
        save_checkpoint(self.out / "last.pt", model, arch, pp, None, {
            "epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"torch_gen": gen.get_state(), "torch": torch.get_rng_state()},
            "best_loss": best_loss, "bad_epochs": bad_epochs, "history": history,
        })


def _threshold_rule(rule: str):
    from .metrics import parse_threshold_spec

    try:
        return parse_threshold_spec(rule)
    except ValueError as e:
        raise EdgeCXRError(str(e)) from None


def format_metrics(m: dict[str, Any], where: str) -> str:
    lo, hi = m["auc_ci95"]
    return (f"{where}: n={m['n']} ({m['n_pos']} {LABELS[1]}, {m['n_neg']} {LABELS[0]})  "
            f"AUC {m['auc']:.4f} [95% CI {lo:.4f}-{hi:.4f}]  threshold {m['threshold']:.4f}  "
            f"accuracy {m['accuracy']:.4f}  sensitivity {m['sensitivity']:.4f}  "
            f"specificity {m['specificity']:.4f}  PPV {m['ppv']:.4f}  NPV {m['npv']:.4f}  "
            f"TN {m['tn']} FP {m['fp']} FN {m['fn']} TP {m['tp']}")
