"""Paired validation: a quantized bundle against its fp32 twin on the same images (device side, no torch).

A site has its own labelled images and wants to know what int8 costs on them before it
switches: both bundles run on the board, in their own runtimes, on the identical
preprocessed images; results are paired by each image's sha256, and the report gives the
paired AUC drop with DeLong's test, label agreement at the operating threshold, and every
image whose call flipped. The same pairing judges the shift stress set in ``gate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.device.bundle import verify
from edgecxr.shared.errors import BundleError, DataError
from edgecxr.shared.metrics import binary_metrics, delong_paired, softmax_pos


@dataclass
class ImageSet:
    """Preprocessed, labelled images in a fixed order (sorted by relative path)."""

    source: str
    paths: list[str]
    shas: list[str]
    y: np.ndarray
    x: np.ndarray
    skipped: list[dict[str, str]]


def load_image_set(data: str | Path, preprocess) -> ImageSet:
    from dataclasses import asdict

    from edgecxr.shared.data import load_preprocessed, scan

    ds = scan(data)
    items = sorted(ds.items, key=lambda it: it.path)
    if not items:
        raise DataError("no readable images", data)
    x = np.stack([load_preprocessed(ds.root, it, preprocess)[0] for it in items]).astype(np.float32)
    return ImageSet(str(data), [it.path for it in items], [it.sha256 for it in items],
                    np.array([it.label for it in items]), x, [asdict(s) for s in ds.skipped])


def run_probs(bundle: str | Path, x: np.ndarray, threads: int | None = None, bs: int = 16) -> np.ndarray:
    """P(PNEUMONIA) from a bundle's own runtime for preprocessed images."""
    from edgecxr.device.backends import open_backend

    b = verify(bundle)
    backend = open_backend(b, threads)
    logits = np.concatenate([backend.infer(x[i:i + bs]) for i in range(0, len(x), bs)])
    p = softmax_pos(logits)
    if not np.all(np.isfinite(p)):
        raise BundleError("the model produced non-finite outputs", bundle)
    return p


def compare(y: np.ndarray, p_ref: np.ndarray, p: np.ndarray, thr: float,
            paths: list[str] | None = None) -> dict[str, Any]:
    """The quantized scores ``p`` against the fp32 scores ``p_ref`` on the same labelled images."""
    diff = np.abs(p - p_ref)
    flips = np.nonzero((p_ref >= thr) != (p >= thr))[0]
    out: dict[str, Any] = {
        "n": int(len(y)), "threshold": float(thr),
        "label_agreement": float(1.0 - len(flips) / max(1, len(y))),
        "mean_abs_prob_diff": float(diff.mean()), "max_abs_prob_diff": float(diff.max()),
        "accuracy_float": binary_metrics(y, p_ref, thr).accuracy, "accuracy": binary_metrics(y, p, thr).accuracy,
        "flipped": [{"path": paths[i] if paths else int(i), "label": int(y[i]), "p_fp32": round(float(p_ref[i]), 6),
                     "p": round(float(p[i]), 6)} for i in flips],
    }
    if len(set(y.tolist())) == 2:
        d = delong_paired(y, p_ref, p)
        out.update({"auc_float": d.auc_a, "auc": d.auc_b, "auc_drop": d.diff, "auc_drop_ci95": [d.ci_lo, d.ci_hi],
                    "delong_p": d.p_value})
    else:
        out["note"] = "single-class images: no AUC"
    return out


def manifest_of(bundle: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(bundle) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read manifest.json ({e.__class__.__name__})", bundle) from None


def check_twins(quant: str | Path, ref: str | Path) -> None:
    """Refuse a pair that does not come from one checkpoint with one preprocessing."""
    mq, mr = manifest_of(quant), manifest_of(ref)
    if mr.get("precision") != "fp32":
        raise BundleError(f"the reference must be an fp32 bundle (this one is {mr.get('precision')})", ref)
    sq, sr = (mq.get("source") or {}).get("checkpoint_sha256"), (mr.get("source") or {}).get("checkpoint_sha256")
    if not sq or sq != sr:
        raise BundleError(f"not the fp32 twin of {Path(quant).name}: made from another checkpoint", ref)
    if mq.get("preprocess") != mr.get("preprocess"):
        raise BundleError(f"not the fp32 twin of {Path(quant).name}: other preprocessing", ref)


def find_twin(quant: str | Path, candidates: list[str | Path] | None = None) -> Path | None:
    """The fp32 bundle made from the same checkpoint: among ``candidates``, else beside ``quant``.

    The same backend is preferred (it isolates what quantization changed); any fp32 runtime of
    the same checkpoint will do otherwise (fp32 runtimes agree with PyTorch within 1e-3).
    """
    quant = Path(quant)
    mq = manifest_of(quant)
    pool = [Path(c) for c in candidates] if candidates else \
        [p for p in sorted(quant.parent.iterdir()) if p.is_dir() and (p / "manifest.json").exists()]
    same, other = [], []
    for c in pool:
        if c.resolve() == quant.resolve():
            continue
        try:
            check_twins(quant, c)
        except BundleError:
            continue
        (same if manifest_of(c).get("backend") == mq.get("backend") else other).append(c)
    found = same or other
    return found[0] if found else None
