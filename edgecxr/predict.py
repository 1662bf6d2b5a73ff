"""Classify image files with a bundle (device side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends import open_backend
from .bundle import verify
from .errors import ImageReadError
from .imageio import load_grey
from .metrics import softmax_pos
from .preprocess import preprocess_grey


def predict(bundle: str | Path, images: list[str | Path], threads: int | None = None,
            expect: str | None = None) -> list[dict[str, Any]]:
    b = verify(bundle, expect=expect)
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
