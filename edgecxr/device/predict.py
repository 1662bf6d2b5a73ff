"""Classify image files with a bundle (device side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecxr.device.api import Model
from edgecxr.shared.errors import ImageReadError


def predict(bundle: str | Path, images: list[str | Path], threads: int | None = None,
            expect: str | None = None) -> list[dict[str, Any]]:
    """One row per image: file, prob, threshold, label, bundle; or file and error (the file is skipped).
    ``expect``: refuse the bundle unless its digest is this (sha256:...)."""
    model = Model(bundle, threads, expect=expect)
    rows = []
    for f, r in zip(images, model.predict_files(list(images)), strict=True):
        if isinstance(r, ImageReadError):
            rows.append({"file": str(f), "error": r.message})
        else:
            rows.append({"file": str(f), "prob": r.prob, "threshold": r.threshold, "label": r.label, "bundle": r.bundle})
    return rows


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
