"""The one preprocessing implementation, in numpy.

Used by training (before augmentation), evaluation, calibration, export
checks and every runtime backend.  Its parameters are a small record that is
stored in checkpoints and deployment bundles, so the device never guesses.

Pipeline: grey [0,1] -> resize to size x size (Pillow bilinear, float) ->
normalise per channel ((x - mean) / std) -> C x H x W float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    size: int = 224
    channels: int = 3
    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)
    resample: str = "bilinear"
    colour: str = "grey"  # inputs are converted to luma, then replicated
    version: int = 1

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"input size {self.size} is too small (minimum 8)")
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            # Allow a single mean/std for a 3-channel model and vice versa.
            object.__setattr__(self, "mean", tuple(self.mean[:1]) * self.channels
                               if len(self.mean) in (1, 3) else self.mean)
            object.__setattr__(self, "std", tuple(self.std[:1]) * self.channels
                               if len(self.std) in (1, 3) else self.std)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {k: d[k] for k in ("size", "channels", "mean", "std", "resample", "colour", "version")
                 if k in d}
        if "mean" in known:
            known["mean"] = tuple(float(x) for x in known["mean"])
        if "std" in known:
            known["std"] = tuple(float(x) for x in known["std"])
        return cls(**known)


def resize_grey(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize an HxW float image in [0,1] to size x size (aspect not kept)."""
    from PIL import Image

    grey = np.asarray(grey, dtype=np.float32)
    if grey.shape == (size, size):
        return grey.copy()
    im = Image.fromarray(grey)
    out = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def normalize(grey_resized: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """size x size grey in [0,1] -> C x H x W normalised float32."""
    g = np.asarray(grey_resized, dtype=np.float32)
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]
    return ((g[None, :, :] - mean) / std).astype(np.float32)


def preprocess_grey(grey: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    return normalize(resize_grey(grey, cfg.size), cfg)


def preprocess_file(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    from edgecxr.shared.imageio import load_grey

    return preprocess_grey(load_grey(path), cfg)


def batch(arrays: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(arrays, axis=0), dtype=np.float32)
