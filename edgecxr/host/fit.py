"""The pieces a training run and a pruning run share (host side, torch): seeds, stratified caps,
the grey image cache, the torch side of the numpy normalisation, prediction on a cache, the
threshold rule, and the environment a run records.  :mod:`.train` and :mod:`.prune` both import it.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecxr import __version__
from edgecxr.shared.data import Item, SplitManifest
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.metrics import softmax_pos
from edgecxr.shared.preprocess import PreprocessConfig, resize_grey


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cap_stratified(items: list[Item], n: int, seed: int) -> list[Item]:
    """At most ``n`` of ``items`` (0 = all), keeping the class proportions, chosen with ``seed``."""
    if n <= 0 or n >= len(items):
        return items
    # stratified cap: keep class proportions
    rng = np.random.default_rng(seed)
    out: list[Item] = []
    for lab in (0, 1):
        grp = [it for it in items if it.label == lab]
        k = max(1, int(round(n * len(grp) / len(items))))
        idx = sorted(rng.choice(len(grp), size=min(k, len(grp)), replace=False))
        out += [grp[i] for i in idx]
    return out


def load_cache(split: SplitManifest, items: list[Item], size: int, progress=None) -> np.ndarray:
    """Grey [0,1] images resized to size, as float16 N x H x W (the numpy preprocessing)."""
    arr = np.empty((len(items), size, size), dtype=np.float16)
    for i, it in enumerate(items):
        arr[i] = resize_grey(split.load(it), size)
        if progress:
            progress(i + 1)
    return arr


def normalize_torch(x: torch.Tensor, pp: PreprocessConfig) -> torch.Tensor:
    """N x H x W grey [0,1] -> N x C x H x W; same arithmetic as preprocess.normalize."""
    mean = torch.tensor(pp.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(pp.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.unsqueeze(1).float() - mean) / std


@torch.no_grad()
def predict_cache(model: nn.Module, cache: np.ndarray, pp: PreprocessConfig, bs: int = 64,
                  device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x 2, p(pneumonia) N) for a cached grey array (fp32 arithmetic on any device)."""
    model.eval()
    device = device or next(model.parameters()).device
    outs = []
    for i in range(0, len(cache), bs):
        xb = torch.from_numpy(cache[i:i + bs].astype(np.float32)).to(device)
        xb = normalize_torch(xb, pp)
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        outs.append(model(xb).float().cpu())
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, 2), np.float32)
    return logits, softmax_pos(logits)


def env_record() -> dict[str, Any]:
    import torchvision

    return {
        "edgecxr": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def threshold_rule(rule: str):
    """``parse_threshold_spec(rule)`` with a bad rule as one clear line (EdgeCXRError)."""
    from edgecxr.shared.metrics import parse_threshold_spec

    try:
        return parse_threshold_spec(rule)
    except ValueError as e:
        raise EdgeCXRError(str(e)) from None
