"""Classify image files with a bundle (device side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecxr.common.errors import ImageReadError
from edgecxr.common.imageio import load_grey
from edgecxr.common.metrics import softmax_pos
from edgecxr.common.preprocess import preprocess_grey
from edgecxr.device.backends import open_backend
from edgecxr.device.bundle import verify


def predict(bundle: str | Path, images: list[str | Path], threads: int | None = None) -> list[dict[str, Any]]:
    b = verify(bundle)
    backend = open_backend(b, threads)
    pp, thr, labels = b.preprocess, b.threshold, b.manifest["labels"]
    out = []
    for f in images:
        try:
            x = preprocess_grey(load_grey(f), pp)[None]
        except ImageReadError as e:
            out.append({"file": str(f), "error": e.message})
            continue
        p = float(softmax_pos(backend.infer(x))[0])
        out.append({"file": str(f), "prob": p, "threshold": thr, "label": labels[int(p >= thr)],
                    "bundle": b.name})
    return out


def format_rows(rows: list[dict[str, Any]], json_out: bool = False) -> list[str]:
    """One output line per image (JSON lines with ``json_out``), as `predict` and `remote predict` print them."""
    import json

    out = []
    for r in rows:
        if json_out:
            out.append(json.dumps(r))
        elif r.get("error"):
            out.append(f"{r['file']}: error: {r['error']}")
        else:
            out.append(f"{r['file']}: {r['label']}  p(pneumonia)={r['prob']:.4f}  threshold {r['threshold']:.4f}")
    return out
