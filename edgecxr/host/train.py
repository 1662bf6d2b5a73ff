"""Training MobileNetV2 on a recorded split (host side, torch).

Adam, cosine annealing, early stopping on validation loss and class weighting for
the ~1:3 imbalance.  The default recipe is ``acquisition`` (rotations and flips plus
zoom, shift, exposure/contrast/gamma, noise and blur; the seed paper's rotations and
flips only are ``--recipe paper``) and the default operating threshold is chosen on
validation for sensitivity 0.95 (``sens=0.95``).  Every knob is a named field of
:class:`~edgecxr.host.train_config.TrainConfig`; a run directory holds config.json
(``edgecxr train --config`` replays it), history.csv, last.pt, best.pt, metrics.json,
val_predictions.csv and the PNG curves.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecxr import LABELS
from edgecxr.host.fit import (  # noqa: F401  (re-exported: benchmarks/ and tests use them from here)
    cap_stratified,
    env_record,
    load_cache,
    normalize_torch,
    predict_cache,
    seed_everything,
    threshold_rule,
)
from edgecxr.host.model import (
    build_from_arch,
    build_mobilenet_v2,
    describe_arch,
    imagenet_mobilenet_v2,
    load_init_weights,
    read_checkpoint,
    save_checkpoint,
)
from edgecxr.host.train_config import RECIPES, TrainConfig, apply_recipe  # noqa: F401  (re-exported)
from edgecxr.shared.data import SplitManifest
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from edgecxr.shared.metrics import choose_threshold, summarize
from edgecxr.shared.preprocess import PreprocessConfig


def ema_warmup_fn(decay: float):
    """EMA update for ``AveragedModel(multi_avg_fn=...)`` with the usual warm-up.

    The effective decay is min(decay, (1 + n) / (10 + n)) after n updates: a plain 0.999 EMA
    still holds half of the random initial weights after 700 steps (10 epochs of this data at
    batch 64), and such a mixture with averaged batch-norm statistics predicts nothing.
    """
    @torch.no_grad()
    def update(avg: list[torch.Tensor], cur: list[torch.Tensor], num_averaged) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(avg, cur, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(avg, cur, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update


def resolve_device(name: str) -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise EdgeCXRError(f"unknown --device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeCXRError("--device cuda: no CUDA GPU is visible to torch on this machine")
    return torch.device(name)


def augment(x: torch.Tensor, rotation: float, hflip: bool, gen: torch.Generator,
            zoom: float = 0.0, translate: float = 0.0) -> torch.Tensor:
    """Random rotation, zoom and shift (one bilinear warp, zero fill) and horizontal flip of N x H x W.

    Random numbers come from ``gen`` on the CPU whatever the device of ``x``, so a run draws the
    same augmentation on CPU and GPU.
    """
    n = x.shape[0]
    ang = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotation)
    cos, sin = torch.cos(ang), torch.sin(ang)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if hflip else torch.ones(n)
    scale = torch.ones(n)
    if zoom > 0:
        scale = torch.exp((torch.rand(n, generator=gen) * 2 - 1) * math.log1p(zoom))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip * scale
    theta[:, 0, 1] = -sin * scale
    theta[:, 1, 0] = sin * flip * scale
    theta[:, 1, 1] = cos * scale
    if translate > 0:
        theta[:, :, 2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * 2 * translate
    grid = F.affine_grid(theta.to(x.device), (n, 1, x.shape[1], x.shape[2]), align_corners=False)
    return F.grid_sample(x.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of N x H x W with one sigma (pixels) per image; sigma 0 = identity."""
    n = x.shape[0]
    r = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=x.device)
    s = sigma.to(x.device).clamp_min(1e-3).view(n, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    y = x.unsqueeze(0)  # 1 x N x H x W, one group per image
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(n, 1, 1, -1), groups=n)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(n, 1, -1, 1), groups=n)
    return y.squeeze(0)


def photometric(x: torch.Tensor, gen: torch.Generator, intensity: float, noise: float,
                blur: float) -> torch.Tensor:
    """Acquisition jitter on grey [0, 1] N x H x W: exposure, contrast, gamma, blur, detector noise.

    Each applies to a random half (or more) of the batch; strengths are drawn per image.
    """
    n = x.shape[0]
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(dev).view(n, 1, 1)

    def on(p: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen) < p).to(dev).view(n, 1, 1)

    if intensity > 0:
        m = x.mean(dim=(1, 2), keepdim=True)
        c = torch.exp(u(-intensity, intensity))
        x = torch.where(on(0.5), m + (x - m) * c, x)
        x = torch.where(on(0.5), x + u(-intensity / 2, intensity / 2), x)
        g = torch.exp(u(-2 * intensity, 2 * intensity))
        x = torch.where(on(0.5), x.clamp(0, 1) ** g, x)
    if blur > 0:
        sig = torch.rand(n, generator=gen) * blur * x.shape[-1] / 224.0
        sig = torch.where(torch.rand(n, generator=gen) < 0.3, sig, torch.zeros(n))
        if float(sig.max()) > 0.05:
            x = _gaussian_blur(x, sig)
    if noise > 0:
        sig = u(0.0, noise) * on(0.5)
        dgen = torch.Generator(device=dev).manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
        x = x + sig * torch.randn(x.shape, generator=dgen, device=dev)
    return x.clamp(0, 1)


def freeze_first_blocks(model: nn.Module, k: int) -> None:
    for i, block in enumerate(model.features):
        if i < k:
            for p in block.parameters():
                p.requires_grad_(False)


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


@dataclass
class _Run:
    """What one training run holds between its steps (see :meth:`Trainer.run`)."""
    split: Any
    pp: PreprocessConfig
    train_items: list
    val_items: list
    bs: int  # this process's batch
    t0: float
    xtr: Any = None
    xva: Any = None
    ytr: Any = None
    yva: Any = None
    device: Any = None
    cuda: bool = False
    model: Any = None
    train_model: Any = None  # the DDP wrapper under torchrun, else the model
    eval_model: Any = None  # the EMA average when on, else the model
    arch: dict = field(default_factory=dict)
    init_info: dict = field(default_factory=dict)
    opt: Any = None
    sched: Any = None
    weights: Any = None
    loss_fn: Any = None
    val_loss_fn: Any = None
    ema: Any = None
    gen: Any = None
    xtr_dev: Any = None
    ytr_dev: Any = None
    start_epoch: int = 0
    best_loss: float = math.inf
    bad_epochs: int = 0
    history: list = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: TrainConfig, log=print, show_progress: bool = True, dist=None):
        self.cfg = cfg
        self.log = log
        self.show_progress = show_progress
        self.out = Path(cfg.out)
        # a distributed.Dist under torchrun (edgecxr/distributed.py); None: one process, as always
        self.dist = dist
        if dist is not None:
            self.log, self.show_progress = dist.main_only(log), show_progress and dist.is_main
            dist.out = self.out

    def run(self, resume: bool = False) -> dict[str, Any]:
        """Train; returns what metrics.json holds plus ``history`` (one dict per epoch).

        The steps: check the run folder (and read the saved config on ``resume``), load the images
        (:meth:`_load_data`), build model, optimiser and loss (:meth:`_build`), resume or record the
        config (:meth:`_start`), then per epoch :meth:`_train_epoch` and :meth:`_end_epoch`
        (validate, keep the best, save last.pt, early stopping), and :meth:`finish`."""
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        dd = self.dist
        prepare = lambda: self._prepare_folder(resume)  # noqa: E731
        self.cfg = dd.run_on_main(prepare) if dd is not None else prepare()
        cfg = self.cfg
        seed_everything(cfg.seed)
        r = self._load_data()
        self._build(r)
        self._start(r, resume)
        for epoch in range(r.start_epoch, cfg.epochs):
            if r.bad_epochs >= cfg.patience:
                break
            t_ep = time.time()
            tot, seen = self._train_epoch(r, epoch)
            self._end_epoch(r, epoch, tot, seen, t_ep)
        stopped_early = r.bad_epochs >= cfg.patience and len(r.history) < cfg.epochs
        fin = lambda: self.finish(r.split, r.val_items, r.xva, r.yva, r.pp, r.history, stopped_early,  # noqa: E731
                                  time.time() - r.t0)
        return dd.run_on_main(fin) if dd is not None else fin()

    def _load_data(self) -> _Run:
        """The split's images, capped and cached at the training size; the per-process batch."""
        cfg, dd = self.cfg, self.dist
        split = SplitManifest.read(cfg.split, cfg.data_root)
        train_items = cap_stratified(split.subset("train"), cfg.max_train, cfg.seed)
        val_items = cap_stratified(split.subset("val"), cfg.max_val, cfg.seed)
        if not train_items or not val_items:
            raise EdgeCXRError("split has an empty train or val part", cfg.split)
        for name, its in (("train", train_items), ("val", val_items)):
            if len({it.label for it in its}) < 2:
                raise EdgeCXRError(f"the {name} part of the split has a single class", cfg.split)
        bs = dd.check_plan(len(train_items), cfg.batch_size, cfg.split) if dd is not None else cfg.batch_size
        self.log(f"data: {len(train_items)} train / {len(val_items)} val images at {cfg.size}px "
                 f"(split {cfg.split}, seed {split.seed})")
        r = _Run(split=split, pp=PreprocessConfig(size=cfg.size), train_items=train_items, val_items=val_items,
                 bs=bs, t0=time.time())
        r.xtr = self._cache(split, train_items, cfg.size, "loading train images")
        r.xva = self._cache(split, val_items, cfg.size, "loading val images")
        r.ytr = torch.tensor([it.label for it in train_items])
        r.yva = np.array([it.label for it in val_items])
        self.log(f"data cached in {time.time() - r.t0:.1f}s")
        return r

    def _build(self, r: _Run) -> None:
        """Model (on its device, wrapped for DDP under torchrun), optimiser, schedule, losses, EMA."""
        cfg, dd = self.cfg, self.dist
        r.device = device = resolve_device(cfg.device)
        model, r.init_info = make_model(cfg, self.log)
        r.arch = r.init_info.get("arch") or describe_arch(model, cfg.width_mult)
        freeze_first_blocks(model, cfg.freeze_blocks)
        r.cuda = cuda = device.type == "cuda"
        r.model = model = model.to(device, memory_format=torch.channels_last) if cuda else model
        r.train_model = dd.wrap(model, device) if dd is not None else model
        params = [p for p in model.parameters() if p.requires_grad]
        r.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        r.sched = torch.optim.lr_scheduler.CosineAnnealingLR(r.opt, T_max=max(cfg.epochs, 1), eta_min=cfg.min_lr)
        counts = torch.bincount(r.ytr, minlength=2).float()
        r.weights = (counts.sum() / (2 * counts)) if cfg.class_weighting else torch.ones(2)
        r.loss_fn = nn.CrossEntropyLoss(weight=r.weights.to(device), label_smoothing=cfg.label_smoothing)
        r.val_loss_fn = nn.CrossEntropyLoss(weight=r.weights)
        if cfg.ema > 0:
            from torch.optim.swa_utils import AveragedModel

            r.ema = AveragedModel(model, multi_avg_fn=ema_warmup_fn(cfg.ema), use_buffers=True)
        r.eval_model = r.ema.module if r.ema is not None else model
        if cuda:
            r.xtr_dev = torch.from_numpy(r.xtr).to(device)  # float16 N x H x W on the GPU
            r.ytr_dev = r.ytr.to(device)
        self.log(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)}, bf16 autocast)" if cuda else ""))

    def _start(self, r: _Run, resume: bool) -> None:
        """The run's generator, then last.pt's state on ``resume``, else config.json written."""
        cfg, dd, out = self.cfg, self.dist, self.out
        r.gen = torch.Generator().manual_seed(cfg.seed)
        if dd is not None:
            dd.seed_rank(r.gen, cfg.seed)
        if resume:
            last_path = out / "last.pt"
            load = lambda: torch.load(last_path, map_location="cpu", weights_only=False)  # noqa: E731
            blob = dd.run_on_main(load) if dd is not None else load()
            r.model.load_state_dict(blob["state_dict"])
            if r.ema is not None and blob.get("ema") is not None:
                r.ema.load_state_dict(blob["ema"])
            r.opt.load_state_dict(blob["optimizer"])
            r.sched.load_state_dict(blob["scheduler"])
            if dd is not None:
                dd.restore_rng(r.gen, blob)
            else:
                r.gen.set_state(blob["rng"]["torch_gen"])
                torch.set_rng_state(blob["rng"]["torch"])
            r.start_epoch = blob["epoch"] + 1
            r.best_loss, r.bad_epochs = blob["best_loss"], blob["bad_epochs"]
            r.history = blob["history"]
            self.log(f"resumed from {last_path} after epoch {blob['epoch'] + 1}")
        elif dd is None or dd.is_main:
            atomic_write_json(out / "config.json", {
                "train": asdict(cfg), "preprocess": r.pp.to_dict(), "arch": r.arch, "init": r.init_info,
                "split_sha256": sha256_file(cfg.split), "class_weights": r.weights.tolist(),
                "env": env_record(), **({"distributed": dd.record(cfg.batch_size)} if dd is not None else {}),
            })

    def _train_epoch(self, r: _Run, epoch: int) -> tuple[float, int]:
        """One pass over this process's share of the training images; (summed loss, images seen)."""
        cfg, dd, bs, cuda, pp = self.cfg, self.dist, r.bs, r.cuda, r.pp
        n = len(r.train_items)
        steps = math.ceil((n // dd.world_size if dd is not None else n) / bs)
        r.model.train()
        perm = dd.epoch_indices(n, cfg.seed, epoch) if dd is not None else torch.randperm(n, generator=r.gen)
        tot, seen = 0.0, 0
        with self._bar(steps, f"epoch {epoch + 1}/{cfg.epochs}") as step:
            for s in range(steps):
                idx = perm[s * bs:(s + 1) * bs]
                if len(idx) < 2:  # BatchNorm needs > 1 sample
                    continue
                if cuda:
                    xb, yb = r.xtr_dev[idx.to(r.device)].float(), r.ytr_dev[idx.to(r.device)]
                else:
                    xb, yb = torch.from_numpy(r.xtr[idx.numpy()].astype(np.float32)), r.ytr[idx]
                xb = augment(xb, cfg.rotation, cfg.hflip, r.gen, cfg.zoom, cfg.translate)
                if cfg.intensity > 0 or cfg.noise > 0 or cfg.blur > 0:
                    xb = photometric(xb, r.gen, cfg.intensity, cfg.noise, cfg.blur)
                xb = normalize_torch(xb, pp)
                lam, perm_b = 1.0, None
                if cfg.mixup > 0:
                    lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=r.gen)))
                                .beta(cfg.mixup, cfg.mixup))
                    perm_b = torch.randperm(len(idx), generator=r.gen).to(xb.device)
                    xb = lam * xb + (1 - lam) * xb[perm_b]
                if cuda:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    out_b = r.train_model(xb)
                out_b = out_b.float()
                loss = r.loss_fn(out_b, yb)
                if perm_b is not None:
                    loss = lam * loss + (1 - lam) * r.loss_fn(out_b, yb[perm_b])
                r.opt.zero_grad(set_to_none=True)
                loss.backward()
                r.opt.step()
                if r.ema is not None:
                    r.ema.update_parameters(r.model)
                tot += loss.item() * len(idx)
                seen += len(idx)
                step()
        r.sched.step()
        return tot, seen

    def _end_epoch(self, r: _Run, epoch: int, tot: float, seen: int, t_ep: float) -> None:
        """Validate (gathered across ranks), keep the best checkpoint, write history and last.pt."""
        from edgecxr.shared.metrics import binary_metrics, roc_auc

        cfg, dd, out, pp = self.cfg, self.dist, self.out, r.pp
        if dd is not None:
            tot, seen = dd.sum(tot, seen)
            dd.sync_buffers(r.model, r.ema)
            logits, prob = dd.predict(lambda part: predict_cache(r.eval_model, part, pp), r.xva)
        else:
            logits, prob = predict_cache(r.eval_model, r.xva, pp)
        vloss = float(r.val_loss_fn(torch.from_numpy(logits), torch.from_numpy(r.yva)))
        vauc = roc_auc(r.yva, prob)
        vacc = binary_metrics(r.yva, prob, 0.5).accuracy
        row = {"epoch": epoch + 1, "train_loss": tot / max(seen, 1), "val_loss": vloss,
               "val_auc": vauc, "val_acc@0.5": vacc, "lr": r.opt.param_groups[0]["lr"],
               "seconds": time.time() - t_ep}
        r.history.append(row)
        improved = vloss < r.best_loss - 1e-6
        if dd is not None:  # the same on every rank already; rank 0's word is final
            improved = dd.agree(improved)
        if improved:
            r.best_loss, r.bad_epochs = vloss, 0
            if dd is None or dd.is_main:
                save_checkpoint(out / "best.pt", r.eval_model, r.arch, pp, None,
                                {"epoch": epoch + 1, "val_loss": vloss, "val_auc": vauc, "train": asdict(cfg)})
        else:
            r.bad_epochs += 1
        if dd is None or dd.is_main:
            self._write_history(r.history)
        self._save_last(r.model, r.opt, r.sched, r.gen, epoch, r.best_loss, r.bad_epochs, r.history, r.arch, pp,
                        r.ema)
        if dd is not None:
            dd.barrier()
        self.log(f"epoch {epoch + 1}: train_loss {row['train_loss']:.4f} val_loss {vloss:.4f} "
                 f"val_auc {vauc:.4f} val_acc@0.5 {vacc:.4f} ({row['seconds']:.0f}s)"
                 + (" *best" if improved else f" (no improvement {r.bad_epochs}/{cfg.patience})"))

    def _prepare_folder(self, resume: bool) -> TrainConfig:
        """The config to run (the saved one on --resume) after checking the run folder (rank 0 only)."""
        from edgecxr.host.distributed import check_resume_record

        cfg, out = self.cfg, self.out
        last_path = out / "last.pt"
        if resume:
            if not last_path.exists():
                raise EdgeCXRError("nothing to resume: no last.pt in the run folder", out)
            saved = json.loads((out / "config.json").read_text())
            check_resume_record(saved.get("distributed"), self.dist, out)
            saved_cfg = saved["train"]
            saved_cfg.pop("extra", None)
            cfg = TrainConfig(**{**saved_cfg, "epochs": cfg.epochs or saved_cfg["epochs"]})
        elif out.exists() and any(out.glob("*.pt")):
            raise EdgeCXRError("run folder already has checkpoints; use --resume to continue or another --out", out)
        out.mkdir(parents=True, exist_ok=True)
        return cfg

    def finish(self, split, val_items, xva, yva, pp, history, stopped_early, wall) -> dict[str, Any]:
        from edgecxr.host.model import load_checkpoint

        out, cfg = self.out, self.cfg
        model, meta = load_checkpoint(out / "best.pt")
        _, prob = predict_cache(model, xva, pp)
        method, target = threshold_rule(cfg.threshold_rule)
        thr = choose_threshold(yva, prob, method, target)
        metrics = summarize(yva, prob, thr)
        from edgecxr.shared.metrics import expected_calibration_error, fit_temperature, reliability_bins

        metrics["ece"] = expected_calibration_error(yva, prob)
        metrics["temperature_fit"] = fit_temperature(yva, prob)
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
            from edgecxr.shared.plots import plot_history, plot_reliability, plot_roc

            plot_history(history, out / "curves.png")
            plot_reliability(reliability_bins(yva, prob), metrics["ece"], out / "reliability_val.png")
            plot_roc({"MobileNetV2 fp32 (val)": (yva, prob)}, out / "roc_val.png", thr_points={"MobileNetV2 fp32 (val)": thr})
        except ImportError:
            self.log("matplotlib not installed: no PNG plots")
        self.log(format_metrics(metrics, "validation"))
        return {**result, "history": history}  # metrics.json without it; callers get the epochs too

    def _cache(self, split, items, size, desc):
        with self._bar(len(items), desc) as step:
            return load_cache(split, items, size, lambda i: step())

    def _bar(self, total: int, desc: str):
        from edgecxr.shared.progress import bar

        return bar(total, desc, enabled=self.show_progress)

    def _write_history(self, history: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.out / "history.csv", buf.getvalue())

    def _save_last(self, model, opt, sched, gen, epoch, best_loss, bad_epochs, history, arch, pp, ema=None) -> None:
        more = {}
        if self.dist is not None:  # every rank's random state, gathered; rank 0 writes
            more["distributed"] = self.dist.last_record(gen, self.cfg.batch_size, epoch)
            if not self.dist.is_main:
                return
        save_checkpoint(self.out / "last.pt", model, arch, pp, None, {
            "ema": _cpu_state(ema.state_dict()) if ema is not None else None,
            "epoch": epoch, "optimizer": _cpu_state(opt.state_dict()), "scheduler": sched.state_dict(),
            "rng": {"torch_gen": gen.get_state(), "torch": torch.get_rng_state()},
            "best_loss": best_loss, "bad_epochs": bad_epochs, "history": history, **more,
        })


def _cpu_state(obj):
    """A state dict (nested) with every tensor on the CPU, so last.pt resumes on any device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_state(v) for v in obj)
    return obj


def format_metrics(m: dict[str, Any], where: str) -> str:
    lo, hi = m["auc_ci95"]
    return (f"{where}: n={m['n']} ({m['n_pos']} {LABELS[1]}, {m['n_neg']} {LABELS[0]})  "
            f"AUC {m['auc']:.4f} [95% CI {lo:.4f}-{hi:.4f}]  threshold {m['threshold']:.4f}  "
            f"accuracy {m['accuracy']:.4f}  sensitivity {m['sensitivity']:.4f}  "
            f"specificity {m['specificity']:.4f}  PPV {m['ppv']:.4f}  NPV {m['npv']:.4f}  "
            f"TN {m['tn']} FP {m['fp']} FN {m['fn']} TP {m['tp']}")


_cap = cap_stratified  # the names benchmarks/training/*.py use
_threshold_rule = threshold_rule
