"""Evaluate a checkpoint on the validation split or a labelled folder (host side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.host.model import load_checkpoint
from edgecxr.shared.data import SplitManifest, load_eval_set
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.fsutil import atomic_write_json
from edgecxr.shared.metrics import (
    apply_temperature,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    parse_threshold_spec,
    reliability_bins,
    summarize,
)
from edgecxr.shared.preprocess import PreprocessConfig, resize_grey


def evaluate(checkpoint: str | Path, split: str | Path | None = None, data: str | Path | None = None,
             threshold: str | None = None, out: str | Path | None = None, log=print,
             save: str | Path | None = None, reliability: str | Path | None = None,
             fold_temperature: bool = False) -> dict[str, Any]:
    """Metrics of a checkpoint; ``save`` writes a copy carrying a threshold re-chosen on validation."""
    from edgecxr.host.train import predict_cache

    model, meta = load_checkpoint(checkpoint)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    if (split is None) == (data is None):
        raise EdgeCXRError("give exactly one of --split (its validation part) or --data (a labelled folder or .npz)")
    if save and (split is None or not threshold):
        raise EdgeCXRError("--save writes a copy with a threshold re-chosen on validation: "
                           "give --split and --threshold")
    if fold_temperature and not save:
        raise EdgeCXRError("--fold-temperature changes a copy of the checkpoint: give --save too")
    if split is not None:
        sm = SplitManifest.read(split)
        items = sm.subset("val")
        greys = [sm.load(it) for it in items]
        where = f"validation split of {split}"
    else:
        items, greys, ds = load_eval_set(data)
        for s in ds.skipped:
            log(f"skipped {s.path}: {s.reason}")
        for note in ds.notes:
            log(note)
        where = f"{data}"
    y = np.array([it.label for it in items])
    cache = np.stack([resize_grey(g, pp.size) for g in greys]).astype(np.float32)
    _, prob = predict_cache(model, cache, pp)
    if threshold:
        try:
            method, target = parse_threshold_spec(threshold)
        except ValueError as e:
            raise EdgeCXRError(str(e)) from None
        if data is not None:
            log("warning: choosing the threshold on the evaluation data itself; "
                "report it as such (the saved threshold was chosen on validation)")
        thr = choose_threshold(y, prob, method, target)
        rule = threshold
    elif meta.get("threshold") is not None:
        thr, rule = float(meta["threshold"]), f"saved ({meta.get('threshold_rule', 'youden')} on validation)"
    else:
        raise EdgeCXRError("checkpoint has no saved threshold; pass --threshold youden", checkpoint)
    m = summarize(y, prob, thr)
    temp = fit_temperature(y, prob)
    m["calibration"] = {"ece": expected_calibration_error(y, prob), "temperature_fit_here": temp,
                        "ece_after_temperature": expected_calibration_error(y, apply_temperature(prob, temp)),
                        "bins": reliability_bins(y, prob)}
    result = {"checkpoint": str(checkpoint), "checkpoint_sha256": meta["sha256"], "data": where,
              "threshold_rule": rule, "metrics": m}
    if save:
        _save_with_threshold(checkpoint, save, thr, threshold, m, temp if fold_temperature else None)
        if fold_temperature:
            log(f"folded temperature {temp:.3f} into the classifier of {save}; threshold "
                f"{thr:.4f} -> {float(apply_temperature([thr], temp)[0]):.4f} (the same decisions)")
    if reliability:
        try:
            from edgecxr.shared.plots import plot_reliability

            plot_reliability(m["calibration"]["bins"], m["calibration"]["ece"], reliability, where)
        except ImportError:
            log("matplotlib not installed: no reliability diagram")
    if out:
        atomic_write_json(out, result)
    return result


def _save_with_threshold(src: str | Path, dst: str | Path, thr: float, rule: str, metrics: dict,
                         temperature: float | None = None) -> None:
    """A copy of checkpoint ``src`` whose operating threshold is ``thr`` (rule ``rule`` on validation).

    With ``temperature``, the classifier's weights and bias are divided by it, so every runtime
    the model is exported to gives the temperature-scaled probability; the threshold moves with
    it and every decision stays the same.
    """
    import io

    import torch

    from edgecxr.shared.fsutil import atomic_write_bytes

    if Path(dst).resolve() == Path(src).resolve():
        raise EdgeCXRError("--save must name a new file, not the checkpoint itself", dst)
    blob = torch.load(src, map_location="cpu", weights_only=False)
    if temperature is not None:
        sd = blob["state_dict"]
        keys = [k for k in sd if k.startswith("classifier.") and k.endswith((".weight", ".bias"))]
        if not keys:
            raise EdgeCXRError("no classifier layer to fold a temperature into", src)
        for k in keys:
            sd[k] = sd[k] / float(temperature)
        thr = float(apply_temperature([thr], temperature)[0])
        blob["temperature_folded"] = float(temperature)
    blob["threshold"], blob["threshold_rule"] = float(thr), rule
    blob["val_metrics"] = {k: v for k, v in metrics.items() if k != "calibration"}
    blob["val_metrics"]["threshold"] = float(thr)
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(dst, buf.getvalue())
