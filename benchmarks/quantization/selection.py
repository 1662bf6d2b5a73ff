"""The selection sets the int8 ablations choose recipes on (``ort_ablation.py``, ``litert_ablation.py``).

``images`` validation images drawn by ``stress.select`` with ``seed`` from those the CI gate's stress
set (100 images, seed 0) leaves out, plus their stress corruptions (10 kinds x 3 severities, same
seed), rounded to 8 bits as the PNGs on disk are. So a recipe is never chosen on an image the gate
judges it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Selection:
    model: Any
    meta: dict[str, Any]
    size: int
    threshold: float
    calib: list[np.ndarray]  # calibration images, CHW float
    x: np.ndarray  # N x C x H x W float32: the selection images, then their corruptions
    groups: np.ndarray  # "clean" or the corruption's name, per row of x
    images: int  # selection images (before corruption)
    ci_images: int


def add_arguments(ap, out: Path) -> None:
    """The checkpoint and the selection set's options, shared by the ablations."""
    root = Path(__file__).resolve().parents[2]
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, default=root / "data" / "kermany224-val")
    ap.add_argument("--calibration", type=Path, default=root / "calibration" / "kermany224")
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1, help="selection and corruption seed (CI uses 0)")
    ap.add_argument("--out", type=Path, default=root / "runs" / out)


def selection_set(checkpoint: Path, data: Path, calibration: Path, images: int, seed: int) -> Selection:
    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.model import load_checkpoint
    from edgecxr.shared import stress
    from edgecxr.shared.data import scan
    from edgecxr.shared.imageio import load_grey
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

    model, meta = load_checkpoint(checkpoint)
    cfg = PreprocessConfig.from_dict(meta["preprocess"])
    calib = [preprocess_grey(g, cfg) for g in load_calibration_set(calibration).greys]
    ds = scan(data)
    ci = {it.path for it in stress.select(ds.items, 100, 0)}
    sel = stress.select([it for it in ds.items if it.path not in ci], images, seed)
    greys = [load_grey(Path(ds.root) / it.path) for it in sel]
    xs, groups = [preprocess_grey(g, cfg) for g in greys], ["clean"] * len(greys)
    for c, _s, _i, g in stress.stress_arrays(greys, [it.sha256 for it in sel], seed=seed):
        xs.append(preprocess_grey(stress._to_u8(g).astype(np.float32) / 255.0, cfg))  # as the PNG on disk
        groups.append(c)
    return Selection(model, meta, cfg.size, float(meta.get("threshold") or 0.5), calib,
                     np.stack(xs).astype(np.float32), np.array(groups), len(sel), len(ci))
