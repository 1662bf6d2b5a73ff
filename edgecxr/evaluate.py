"""Evaluate a checkpoint on the validation split or a labelled folder (host side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .data import SplitManifest, load_eval_set
from .errors import EdgeCXRError
from .fsutil import atomic_write_json
from .metrics import choose_threshold, parse_threshold_spec, summarize
from .model import load_checkpoint
from .preprocess import PreprocessConfig, resize_grey


def evaluate(checkpoint: str | Path, split: str | Path | None = None, data: str | Path | None = None,
             threshold: str | None = None, out: str | Path | None = None, log=print) -> dict[str, Any]:
    from .train import predict_cache

    model, meta = load_checkpoint(checkpoint)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    if (split is None) == (data is None):
        raise EdgeCXRError("give exactly one of --split (its validation part) or --data (a labelled folder or .npz)")
    if split is not None:
        sm = SplitManifest.read(split)
        items = sm.subset("val")
        greys = [sm.load(it) for it in items]
        where = f"validation split of {split}"
    else:
        items, greys, ds = load_eval_set(data)
        for s in ds.skipped:
            log(f"skipped {s.path}: {s.reason}")
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
    result = {"checkpoint": str(checkpoint), "checkpoint_sha256": meta["sha256"], "data": where,
              "threshold_rule": rule, "metrics": m}
    if out:
        atomic_write_json(out, result)
    return result
