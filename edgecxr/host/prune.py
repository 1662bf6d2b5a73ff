"""Structured channel pruning of a trained MobileNetV2 (host side, torch + torch-pruning).

``prune_checkpoint`` removes whole channels with torch-pruning's dependency graph, so
every layer that shares a channel dimension is cut together: the residual adds of the
inverted-residual blocks (all convs feeding one add keep the same channels), the
depthwise 3x3 convs (their channels, groups and batch norms follow the expand conv) and
the classifier's input features.  The stem conv and the classifier's outputs are kept.

* Importance: L2 magnitude of the grouped weights, or first-order Taylor
  (|weight x gradient|, gradients from a few training batches of the split).
* Channels are pruned layer by layer (local pruning) and rounded to the nearest multiple
  of ``round_to`` (8 by default, never below one multiple, never above the layer's
  current width), so int8 kernels on every runtime stay aligned.
* ``steps`` > 1 prunes iteratively (ratio/steps of the channels each step) with
  ``finetune_epochs`` of fine-tuning by the project's ``Trainer`` after *each* step;
  with 0 fine-tune epochs the operating threshold is chosen on validation by the source's rule.

The output folder holds ``best.pt`` (a self-describing checkpoint: ``arch`` with
``pruned: True``, the original width and every conv's channel count, so
``load_checkpoint`` rebuilds it with nothing else), ``prune.json`` (before/after:
parameters, MACs at the input size, fp32 size, validation AUC and accuracy),
``history.csv``/``curves.png`` of the fine-tuning, and ``finetune/stepK/`` with each
Trainer run's records.  The folder is built in a temp sibling and moved into place
only when everything passed.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.fsutil import atomic_dir, atomic_write_bytes, atomic_write_json, sha256_file

IMPORTANCES = ("magnitude", "taylor")
PRUNE_FORMAT = 1


# ---------------------------------------------------------------- helpers
def count_macs_params(model: nn.Module, size: int, channels: int = 3) -> tuple[int, int]:
    """(MACs, parameters) of one image at ``size`` px (torch-pruning's op counter)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, channels, size, size))
    model.train(was_training)
    return int(macs), int(params)


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the fp32 state dict as torch.save writes it (weights and BN buffers)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                for k, v in model.state_dict().items()}, buf)
    return len(buf.getvalue())


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and the classifier's input features, by module name."""
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[f"{name}.in_features"] = int(m.in_features)
    return out


def _round_keep(keep: int, current: int, round_to: int) -> int:
    """Channels to keep: nearest multiple of round_to, at least one multiple, at most current."""
    if round_to <= 1:
        return max(1, min(keep, current))
    k = max(round_to, int(math.floor(keep / round_to + 0.5)) * round_to)
    return min(k, current)


def _make_pruner(model: nn.Module, size: int, channels: int, importance: str, ratio: float, steps: int,
                 round_to: int):
    import torch_pruning as tp

    class _Pruner(tp.pruner.MetaPruner):
        # torch-pruning rounds the kept channels *down*, to zero for an 8-channel layer at ratio
        # 0.5; keep at least one multiple and round to the nearest instead.
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            keep = _round_keep(current_channels - n_pruned, current_channels, round_to)
            return max(current_channels - keep, 0)

    imp = (tp.importance.MagnitudeImportance(p=2) if importance == "magnitude"
           else tp.importance.TaylorImportance())
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)]
    stem = model.features[0][0]
    model.eval()
    return _Pruner(model, torch.zeros(1, channels, size, size), importance=imp, pruning_ratio=ratio,
                   iterative_steps=steps, ignored_layers=[*classifier, stem], round_to=round_to)


def _plan(pruner, ratio: float, round_to: int) -> list[dict[str, Any]]:
    """Per prunable group: its root layer, current channels and the channels kept at ``ratio``."""
    plan = []
    dg = pruner.DG
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        mod = group[0].dep.target.module
        cur = int(dg.get_out_channels(mod))
        raw = int(cur * (1 - ratio))
        plan.append({"layer": dg._module2name.get(mod, str(mod)), "channels": cur, "raw_keep": raw,
                     "keep": _round_keep(raw, cur, round_to) if raw >= 1 else 0})
    return plan


def _check_mobilenet(model: nn.Module, path: Path) -> None:
    feats = getattr(model, "features", None)
    ok = (feats is not None and len(feats) > 0 and isinstance(feats[0], nn.Sequential)
          and isinstance(feats[0][0], nn.Conv2d)
          and any(isinstance(m, nn.Linear) for m in getattr(model, "classifier", nn.Sequential()).modules()))
    if not ok:
        raise EdgeCXRError("not an edgecxr MobileNetV2 checkpoint (no features/classifier layers)", path)


def _evaluate(model: nn.Module, cache: np.ndarray, y: np.ndarray, pp, threshold: float) -> dict[str, Any]:
    from edgecxr.host.fit import predict_cache
    from edgecxr.shared.metrics import summarize

    _, prob = predict_cache(model, cache, pp)
    if not np.all(np.isfinite(prob)):
        raise EdgeCXRError("the pruned model produced non-finite outputs on the validation images")
    return summarize(y, prob, threshold)


def _taylor_gradients(model: nn.Module, x: np.ndarray, y: torch.Tensor, pp, batch_size: int) -> None:
    """Accumulate d(mean cross-entropy)/d(weights) over the given training images (BN in eval mode)."""
    from edgecxr.host.fit import normalize_torch

    model.eval()
    model.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    n = len(x)
    for i in range(0, n, batch_size):
        xb = normalize_torch(torch.from_numpy(x[i:i + batch_size].astype(np.float32)), pp)
        loss = loss_fn(model(xb), y[i:i + batch_size]) / n
        loss.backward()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: np.ndarray, pp, batch_size: int = 64) -> None:
    """Re-estimate every BatchNorm's running mean/variance on ``x`` (grey N x H x W), no weight updates.

    Pruning removes inputs of the following layers, so the stored statistics no longer match their
    outputs; a forward pass over a few hundred training images fixes most of the damage.
    """
    from edgecxr.host.fit import normalize_torch

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if len(xb) < 2:
                continue
            model(normalize_torch(torch.from_numpy(xb.astype(np.float32)), pp))
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.eval()


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    from edgecxr.shared.fsutil import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def format_table(rec: dict[str, Any]) -> str:
    """The before/after table that ``prune_checkpoint`` logs."""
    b, a = rec["before"], rec["after"]

    def ratio(k: str) -> str:
        return f"{a[k] / b[k]:.3f}" if b.get(k) else "-"

    rows = [
        ("parameters", f"{b['params']:,}", f"{a['params']:,}", ratio("params")),
        (f"MACs ({rec['size']} px)", f"{b['macs']:,}", f"{a['macs']:,}", ratio("macs")),
        ("fp32 size (MB)", f"{b['fp32_bytes'] / 1e6:.3f}", f"{a['fp32_bytes'] / 1e6:.3f}", ratio("fp32_bytes")),
        ("val AUC", f"{b['val']['auc']:.4f}", f"{a['val']['auc']:.4f}", f"{a['val']['auc'] - b['val']['auc']:+.4f}"),
        ("val accuracy", f"{b['val']['accuracy']:.4f}", f"{a['val']['accuracy']:.4f}",
         f"{a['val']['accuracy'] - b['val']['accuracy']:+.4f}"),
        ("threshold", f"{b['val']['threshold']:.4f}", f"{a['val']['threshold']:.4f}", ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    hdr = f"{'':<{w0}}  {'before':>12}  {'after':>12}  {'after/before':>12}"
    lines = [hdr, "-" * len(hdr)]
    lines += [f"{r[0]:<{w0}}  {r[1]:>12}  {r[2]:>12}  {r[3]:>12}" for r in rows]
    lines.append(f"(validation n={a['val']['n']}; AUC/accuracy rows show after - before; "
                 f"ratio {rec['ratio']}, {rec['steps']} step(s), {rec['importance']} importance, "
                 f"{rec['finetune_epochs']} fine-tune epoch(s) per step)")
    return "\n".join(lines)


# ---------------------------------------------------------------- main entry
@dataclass
class PruneSettings:
    """How to prune: everything ``prune_checkpoint`` takes besides the source and the output folder."""
    ratio: float
    steps: int = 1
    importance: str = "magnitude"
    finetune_epochs: int = 3
    round_to: int = 8
    size: int | None = None
    lr: float = 1e-3
    seed: int = 0
    batch_size: int = 32
    threads: int = 0
    max_train: int = 0
    max_val: int = 0
    taylor_images: int = 128
    bn_images: int = 256

    def validate(self) -> PruneSettings:
        """The same settings, checked and normalised; EdgeCXRError (one line) for a bad one."""
        try:
            ratio = float(self.ratio)
        except (TypeError, ValueError):
            raise EdgeCXRError(f"pruning ratio {self.ratio!r} is not a number") from None
        if not (0.0 < ratio < 1.0):  # also rejects NaN
            raise EdgeCXRError(f"pruning ratio {ratio} must be strictly between 0 and 1 (0.5 removes half the channels)")
        if int(self.steps) != self.steps or self.steps < 1:
            raise EdgeCXRError(f"--steps {self.steps} must be a whole number >= 1")
        if self.importance not in IMPORTANCES:
            raise EdgeCXRError(f"unknown importance {self.importance!r} (magnitude or taylor)")
        if self.finetune_epochs < 0:
            raise EdgeCXRError(f"--finetune-epochs {self.finetune_epochs} must be >= 0")
        if self.round_to < 1:
            raise EdgeCXRError(f"--round-to {self.round_to} must be >= 1")
        if self.bn_images < 0 or self.taylor_images < 1:
            raise EdgeCXRError("--bn-images must be >= 0 and the Taylor image count >= 1")
        if not self.lr > 0:
            raise EdgeCXRError(f"--lr {self.lr} must be > 0")
        return replace(self, ratio=ratio, steps=int(self.steps))


@dataclass
class _Source:
    """The checkpoint to prune and the images that judge it, loaded and checked."""
    path: Path
    model: nn.Module
    meta: dict[str, Any]
    pp: Any  # PreprocessConfig at the pruning size
    split: Path
    sm: Any  # SplitManifest
    train_items: list
    val_items: list
    xva: np.ndarray
    yva: np.ndarray
    recipe: str  # the source's training recipe (fine-tuning uses it)
    threshold_rule: str
    threshold: float
    threshold_source: str


def _load_source(checkpoint: Path, s: PruneSettings, split: str | Path | None) -> tuple[_Source, int]:
    from edgecxr.host import fit
    from edgecxr.host.model import load_checkpoint
    from edgecxr.host.train_config import RECIPES
    from edgecxr.shared.data import SplitManifest
    from edgecxr.shared.preprocess import PreprocessConfig

    model, meta = load_checkpoint(checkpoint)  # EdgeCXRError for anything that is not an edgecxr MobileNetV2
    _check_mobilenet(model, checkpoint)
    pp0 = PreprocessConfig.from_dict(meta["preprocess"])
    size = int(s.size or pp0.size)
    if size < 32:
        raise EdgeCXRError(f"input size {size} is too small for MobileNetV2 (minimum 32)")
    if split is None:
        split = (meta.get("train") or {}).get("split")
        if not split or not Path(split).exists():
            raise EdgeCXRError("prune needs --split (validation AUC before/after, fine-tuning); "
                               "the checkpoint's own split is not here")
    split = Path(split)
    sm = SplitManifest.read(split)
    train_items = fit.cap_stratified(sm.subset("train"), s.max_train, s.seed)
    val_items = fit.cap_stratified(sm.subset("val"), s.max_val, s.seed)
    for name, its in (("train", train_items), ("val", val_items)):
        if len({it.label for it in its}) < 2:
            raise EdgeCXRError(f"the {name} part of the split is empty or has a single class", split)
    recipe = (meta.get("train") or {}).get("recipe")
    src = _Source(checkpoint, model, meta, replace(pp0, size=size), split, sm, train_items, val_items,
                  np.zeros(0), np.zeros(0), recipe if recipe in RECIPES else "paper",
                  meta.get("threshold_rule") or "youden", 0.0, "checkpoint")
    return src, size


def _check_plan(model: nn.Module, s: PruneSettings, size: int, channels: int, checkpoint: Path):
    pruner = _make_pruner(model, size, channels, s.importance, s.ratio, s.steps, s.round_to)
    plan = _plan(pruner, s.ratio, s.round_to)
    if not plan:
        raise EdgeCXRError("no prunable layer found (is this a MobileNetV2?)", checkpoint)
    empty = [p for p in plan if p["keep"] < 1]
    if empty:
        worst = min(empty, key=lambda p: p["channels"])
        max_ratio = 1 - 1 / min(p["channels"] for p in plan)
        raise EdgeCXRError(
            f"ratio {s.ratio} would leave {len(empty)} layer(s) empty (e.g. {worst['layer']}: {worst['channels']} "
            f"channels); use a ratio of at most {max_ratio:.3f}", checkpoint)
    return pruner, plan


def _measure(model: nn.Module, src: _Source, threshold: float, file: Path) -> dict[str, Any]:
    macs, params = count_macs_params(model, src.pp.size, src.pp.channels)
    return {"params": params, "macs": macs, "fp32_bytes": fp32_bytes(model), "checkpoint_bytes": file.stat().st_size,
            "channels": conv_channels(model), "val": _evaluate(model, src.xva, src.yva, src.pp, float(threshold))}


def _finetune(model: nn.Module, arch: dict[str, Any], src: _Source, s: PruneSettings, k: int, tmp: Path,
              orig_width: float, show_progress: bool, log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fine-tune the pruned weights in place with the source's recipe; returns (trainer result, best.pt blob)."""
    from edgecxr.host.model import save_checkpoint
    from edgecxr.host.train import Trainer
    from edgecxr.host.train_config import TrainConfig, apply_recipe

    run_dir = tmp / "finetune" / f"step{k}"
    init = tmp / "finetune" / f"step{k}-init.pt"
    save_checkpoint(init, model, arch, src.pp, None, {"prune_step": k})
    cfg = TrainConfig(split=str(src.split), out=str(run_dir), size=src.pp.size, width_mult=orig_width,
                        init=str(init), epochs=s.finetune_epochs, batch_size=s.batch_size, lr=s.lr,
                        min_lr=min(1e-6, s.lr), patience=max(s.finetune_epochs, 1), seed=s.seed + k - 1,
                        threads=s.threads, max_train=s.max_train, max_val=s.max_val,
                        threshold_rule=src.threshold_rule,
                        extra={"pruned_from": str(src.path), "prune_step": k})
    # fine-tune with the augmentation the source was trained with (EMA and mixup off: two epochs are
    # too short for either)
    cfg = apply_recipe(cfg, src.recipe, {"ema": 0.0, "mixup": 0.0})
    res = Trainer(cfg, log=log, show_progress=show_progress).run()
    blob = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(blob["state_dict"])  # same tensors the pruner tracks
    model.eval()
    init.unlink()
    for p in run_dir.glob("*.pt"):  # the final weights go to out_dir/best.pt; drop optimizer state
        p.unlink()
    return res, blob


def prune_checkpoint(checkpoint: str | Path, out_dir: str | Path, ratio: float, steps: int = 1,
                     importance: str = "magnitude", finetune_epochs: int = 3, split: str | Path | None = None,
                     round_to: int = 8, size: int | None = None, lr: float = 1e-3, seed: int = 0,
                     batch_size: int = 32, threads: int = 0, max_train: int = 0, max_val: int = 0,
                     taylor_images: int = 128, bn_images: int = 256, force: bool = False,
                     show_progress: bool = False,
                     log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Prune ``checkpoint`` by ``ratio`` of its channels and write ``out_dir`` (best.pt, prune.json, ...).

    ``finetune_epochs`` is per pruning step.  After each step the batch-norm statistics are
    re-estimated on ``bn_images`` training images (0: keep the stale ones); Taylor importance takes
    its gradients from ``taylor_images`` training images.  Returns the prune.json record (with ``checkpoint``:
    the path of the pruned best.pt).  Raises EdgeCXRError for bad input before writing anything.
    The steps: validate settings, load the source, plan, measure before, prune (and fine-tune) step
    by step, write the pruned checkpoint, measure it as written, write prune.json.
    """
    s = PruneSettings(ratio, steps, importance, finetune_epochs, round_to, size, lr, seed, batch_size, threads,
                      max_train, max_val, taylor_images, bn_images).validate()
    return _prune(Path(checkpoint), Path(out_dir), s, split, force, show_progress, log)


def _load_validation(src: _Source, model, size: int) -> None:
    """The validation images and labels, and the threshold: the checkpoint's, else Youden's on them."""
    from edgecxr.host import fit

    src.xva = fit.load_cache(src.sm, src.val_items, size)
    src.yva = np.array([it.label for it in src.val_items])
    src.threshold = src.meta.get("threshold")
    if src.threshold is None:
        from edgecxr.shared.metrics import choose_threshold

        _, p = fit.predict_cache(model, src.xva, src.pp)
        src.threshold, src.threshold_source = choose_threshold(src.yva, p, "youden"), \
            "youden on validation (checkpoint had none)"


def _prune_step(k: int, model, pruner, src: _Source, s: PruneSettings, size: int, images, arch0: dict[str, Any],
                orig_width: float, before: dict[str, Any], tmp: Path, show_progress: bool, log):
    """One pruning step: importance, prune, measure, batch-norm re-estimation, fine-tune.
    Returns (step record, arch, the fine-tuned checkpoint blob or None, its history rows)."""
    from edgecxr.host.model import describe_arch

    xtay, ytay, xbn = images
    pp = src.pp
    t_step = time.time()
    if xtay is not None and ytay is not None:
        _taylor_gradients(model, xtay, ytay, pp, s.batch_size)
    pruner.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    macs, params = count_macs_params(model, size, pp.channels)
    srec: dict[str, Any] = {"step": k, "ratio": round(s.ratio * k / s.steps, 6), "params": params,
                            "macs": macs, "val_auc_pruned": _evaluate(model, src.xva, src.yva, pp,
                                                                      float(src.threshold))["auc"]}
    msg = f"val AUC {srec['val_auc_pruned']:.4f}"
    if xbn is not None:
        recalibrate_bn(model, xbn, pp)
        srec["val_auc_bn_recalibrated"] = _evaluate(model, src.xva, src.yva, pp, float(src.threshold))["auc"]
        msg += f", {srec['val_auc_bn_recalibrated']:.4f} with batch-norm statistics re-estimated"
    log(f"step {k}/{s.steps}: ratio {srec['ratio']:.3f}, {params:,} parameters, {macs:,} MACs, {msg}")
    arch = describe_arch(model, float(arch0.get("width_mult", orig_width)), pruned=True, extra={
        "original_width_mult": orig_width, "prune_ratio": s.ratio, "prune_steps": s.steps,
        "prune_importance": s.importance, "round_to": s.round_to, "channels": conv_channels(model),
        "original_params": int(arch0.get("original_params", before["params"])),
    })
    blob, rows = None, []
    if s.finetune_epochs > 0:
        res, blob = _finetune(model, arch, src, s, k, tmp, orig_width, show_progress, log)
        srec.update({"val_auc_finetuned": res["metrics"]["auc"], "best_epoch": res["best_epoch"],
                     "epochs_run": res["epochs_run"]})
        rows = [{"step": k, "epoch": 0, "step_epoch": int(row["epoch"]),
                 **{c: float(row[c]) for c in ("train_loss", "val_loss", "val_auc", "val_acc@0.5", "lr", "seconds")}}
                for row in res["history"]]
    srec["seconds"] = round(time.time() - t_step, 2)
    return srec, arch, blob, rows


def _prune(checkpoint: Path, out_dir: Path, s: PruneSettings, split, force: bool, show_progress: bool, log):
    from edgecxr.host import fit

    t0 = time.time()
    if out_dir.exists() and not force:
        raise EdgeCXRError("output folder exists; use --force to replace it or choose another --out", out_dir)
    src, size = _load_source(checkpoint, s, split)
    model, meta, pp = src.model, src.meta, src.pp
    arch0 = dict(meta.get("arch") or {})
    pruner, plan = _check_plan(model, s, size, pp.channels, checkpoint)

    if s.threads:
        torch.set_num_threads(s.threads)
    fit.seed_everything(s.seed)
    log(f"pruning {checkpoint} ({arch0.get('width_mult')}x MobileNetV2, {len(plan)} prunable groups) by {s.ratio} "
        f"in {s.steps} step(s), {s.importance} importance, channels rounded to {s.round_to}")
    log(f"data: {len(src.train_items)} train / {len(src.val_items)} val images at {size}px (split {src.split})")
    _load_validation(src, model, size)
    before = {**_measure(model, src, src.threshold, checkpoint), "threshold_source": src.threshold_source}
    xtay, ytay, xbn = _importance_and_bn_images(src, s, log)

    orig_width = float(arch0.get("original_width_mult", arch0.get("width_mult", 1.0)))
    step_log: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    final_blob: dict[str, Any] | None = None
    with atomic_dir(out_dir, force=force) as tmp:
        for k in range(1, s.steps + 1):
            srec, arch, blob, rows = _prune_step(k, model, pruner, src, s, size, (xtay, ytay, xbn), arch0, orig_width,
                                                 before, tmp, show_progress, log)
            final_blob = blob if blob is not None else final_blob
            history += [{**r, "epoch": len(history) + i + 1} for i, r in enumerate(rows)]
            step_log.append(srec)

        prune_info = {"source": str(checkpoint), "source_sha256": meta["sha256"], "ratio": s.ratio, "steps": s.steps,
                      "importance": s.importance, "round_to": s.round_to, "finetune_epochs": s.finetune_epochs,
                      "split": str(src.split), "size": size, "bn_images": 0 if xbn is None else len(xbn)}
        best = _write_pruned(tmp, out_dir, model, arch, src, s, final_blob, prune_info)
        rec = _record(best, out_dir, src, s, prune_info, before, plan, step_log)
        if history:
            _write_history(tmp / "history.csv", history)
            try:
                from edgecxr.shared.plots import plot_history

                plot_history(history, tmp / "curves.png")
            except ImportError:
                log("matplotlib not installed: no curves.png")
        rec["seconds"] = round(time.time() - t0, 2)
        atomic_write_json(tmp / "prune.json", rec)
    log(format_table(rec))
    log(f"wrote {out_dir}: best.pt, prune.json{', history.csv, curves.png' if history else ''} "
        f"({rec['seconds']:.0f}s)")
    return rec


def _importance_and_bn_images(src: _Source, s: PruneSettings, log):
    from edgecxr.host import fit

    xtay = ytay = xbn = None
    if s.importance == "taylor":
        tay_items = fit.cap_stratified(src.train_items, s.taylor_images, s.seed)
        xtay = fit.load_cache(src.sm, tay_items, src.pp.size)
        ytay = torch.tensor([it.label for it in tay_items])
        log(f"taylor importance: gradients from {len(tay_items)} training images")
    if s.bn_images > 0:
        bn_items = fit.cap_stratified(src.train_items, s.bn_images, s.seed + 1)
        xbn = fit.load_cache(src.sm, bn_items, src.pp.size)
        xbn = xbn[np.random.default_rng(s.seed).permutation(len(xbn))]  # mixed classes in every batch
    return xtay, ytay, xbn


def _write_pruned(tmp: Path, out_dir: Path, model: nn.Module, arch: dict[str, Any], src: _Source,
                  s: PruneSettings, final_blob: dict[str, Any] | None, prune_info: dict[str, Any]) -> Path:
    """best.pt: the last fine-tune's checkpoint with the pruning recorded, or (no fine-tuning) the pruned
    weights with a threshold chosen on validation by the source's rule."""
    from edgecxr.host import fit
    from edgecxr.host.model import save_checkpoint
    from edgecxr.shared.metrics import choose_threshold, summarize

    best = tmp / "best.pt"
    if final_blob is not None:
        train = dict(final_blob.get("train") or {})
        train["out"] = str(out_dir / "finetune" / f"step{s.steps}")  # where it ran, under its final name
        train["init"] = f"pruned weights of {src.path}"  # the init file was a temporary copy of them
        final_blob["train"] = train
        final_blob["prune"] = prune_info
        final_blob["init"] = {"init": "pruned", "from_checkpoint": str(src.path), "sha256": src.meta["sha256"],
                              "note": f"{s.ratio} channel pruning of the source, then fine-tuned"}
        final_blob["arch"] = arch
        buf = io.BytesIO()
        torch.save(final_blob, buf)
        atomic_write_bytes(best, buf.getvalue())
    else:
        _, prob = fit.predict_cache(model, src.xva, src.pp)
        thr = choose_threshold(src.yva, prob, *fit.threshold_rule(src.threshold_rule))
        save_checkpoint(best, model, arch, src.pp, thr, {
            "threshold_rule": src.threshold_rule, "val_metrics": summarize(src.yva, prob, thr),
            "train": {"split": str(src.split), "size": src.pp.size, "epochs": 0,
                      "note": f"pruned without fine-tuning; threshold chosen on validation ({src.threshold_rule})"},
            "prune": prune_info,
        })
    return best


def _record(best: Path, out_dir: Path, src: _Source, s: PruneSettings, prune_info: dict[str, Any],
            before: dict[str, Any], plan: list, step_log: list) -> dict[str, Any]:
    """prune.json, with the after column measured on the checkpoint as written, loaded with nothing else."""
    from edgecxr.host import fit
    from edgecxr.host.model import load_checkpoint

    pmodel, pmeta = load_checkpoint(best)
    after = _measure(pmodel, src, pmeta["threshold"], best)
    return {
        "format": PRUNE_FORMAT, "kind": "edgecxr-prune",
        "checkpoint": str(out_dir / "best.pt"), "checkpoint_sha256": sha256_file(best),
        **{k: v for k, v in prune_info.items() if k != "source_sha256"},
        "source_sha256": src.meta["sha256"], "lr": s.lr, "seed": s.seed, "batch_size": s.batch_size,
        "max_train": s.max_train, "max_val": s.max_val,
        "n_train": len(src.train_items), "n_val": len(src.val_items),
        "before": before, "after": after,
        "reduction": {"params": after["params"] / before["params"], "macs": after["macs"] / before["macs"],
                      "fp32_bytes": after["fp32_bytes"] / before["fp32_bytes"],
                      "val_auc_change": after["val"]["auc"] - before["val"]["auc"],
                      "val_accuracy_change": after["val"]["accuracy"] - before["val"]["accuracy"]},
        "plan": plan, "step_log": step_log,
        "env": fit.env_record(), "seconds": None,
    }
