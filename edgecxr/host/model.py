"""MobileNetV2 construction and self-describing checkpoints (host side, torch).

A checkpoint carries its architecture: the builder recreates torchvision's
MobileNetV2 at the recorded width and then reshapes every conv, batch-norm and
linear layer to the shapes in the state dict.  A channel-pruned model therefore
loads without knowing the original width.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecxr import LABELS, __version__
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.fsutil import atomic_write_bytes, sha256_file
from edgecxr.shared.preprocess import PreprocessConfig

CKPT_FORMAT = "edgecxr-checkpoint"
CKPT_VERSION = 1


def build_mobilenet_v2(width_mult: float = 1.0, num_classes: int = 2, dropout: float = 0.2) -> nn.Module:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)


def imagenet_mobilenet_v2(num_classes: int = 2) -> nn.Module:
    """MobileNetV2 with torchvision's ImageNet weights and a new head.

    Needs a network the first time (torchvision caches the file).
    """
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    try:
        m = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
    except Exception as e:  # URLError, HTTPError, hash mismatch...
        raise EdgeCXRError(
            f"cannot download ImageNet weights for MobileNetV2 ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'no network?'}); "
            "use --init none, or --init PATH with a weights file"
        ) from None
    m.classifier[-1] = nn.Linear(m.classifier[-1].in_features, num_classes)
    return m


def reshape_to_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """Resize conv/bn/linear layers in place to match a (pruned) state dict."""
    for name, mod in model.named_modules():
        w = sd.get(f"{name}.weight")
        if w is None:
            continue
        if isinstance(mod, nn.Conv2d):
            out_c, in_per_group = w.shape[0], w.shape[1]
            depthwise = mod.groups == mod.in_channels and mod.groups > 1
            groups = out_c if depthwise else mod.groups
            in_c = in_per_group * groups
            if (out_c, in_c, groups) != (mod.out_channels, mod.in_channels, mod.groups):
                new = nn.Conv2d(in_c, out_c, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                groups, bias=mod.bias is not None)
                _set(model, name, new)
        elif isinstance(mod, nn.BatchNorm2d):
            if w.shape[0] != mod.num_features:
                _set(model, name, nn.BatchNorm2d(w.shape[0], mod.eps, mod.momentum))
        elif isinstance(mod, nn.Linear):
            if tuple(w.shape) != (mod.out_features, mod.in_features):
                _set(model, name, nn.Linear(w.shape[1], w.shape[0], bias=mod.bias is not None))
    return model


def _set(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parts = dotted.split(".")
    parent = root
    for p in parts[:-1]:
        parent = getattr(parent, p)
    setattr(parent, parts[-1], new)


def describe_arch(model: nn.Module, width_mult: float, pruned: bool = False, extra: dict | None = None) -> dict:
    return {
        "name": "mobilenet_v2",
        "width_mult": width_mult,
        "num_classes": 2,
        "pruned": pruned,
        "params": sum(p.numel() for p in model.parameters()),
        **(extra or {}),
    }


def build_from_arch(arch: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    if arch.get("name") != "mobilenet_v2":
        raise EdgeCXRError(f"unsupported architecture {arch.get('name')!r} (this toolkit builds mobilenet_v2)")
    m = build_mobilenet_v2(float(arch.get("width_mult", 1.0)), int(arch.get("num_classes", 2)))
    if state_dict is not None:
        reshape_to_state_dict(m, state_dict)
        m.load_state_dict(state_dict)
    return m


def save_checkpoint(path: str | Path, model: nn.Module, arch: dict, preprocess: PreprocessConfig,
                    threshold: float | None = None, extra: dict | None = None) -> None:
    """Write a self-describing checkpoint atomically."""
    blob = {
        "format": CKPT_FORMAT,
        "version": CKPT_VERSION,
        "toolkit": __version__,
        "arch": arch,
        "labels": list(LABELS),
        "preprocess": preprocess.to_dict(),
        "threshold": threshold,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_file(path: Path, what: str) -> Any:
    """torch.load on the CPU; one line naming the file when it is missing or unreadable."""
    if not path.exists():
        raise EdgeCXRError(f"{what} not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise EdgeCXRError(f"not a readable {what} ({e.__class__.__name__})", path) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    blob = _load_file(path, "checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != CKPT_FORMAT:
        raise EdgeCXRError("not an edgecxr checkpoint (no 'format: edgecxr-checkpoint' record)", path)
    if blob.get("version") != CKPT_VERSION:
        raise EdgeCXRError(f"unsupported checkpoint version {blob.get('version')}", path)
    return blob


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, checkpoint record without the weights)."""
    blob = read_checkpoint(path)
    try:
        model = build_from_arch(blob["arch"], blob["state_dict"])
    except EdgeCXRError as e:
        raise EdgeCXRError(e.message, path) from None
    except Exception as e:
        raise EdgeCXRError(f"checkpoint weights do not fit its architecture ({e.__class__.__name__})", path) from None
    model.eval()
    meta = {k: v for k, v in blob.items() if k not in ("state_dict", "optimizer", "scheduler", "rng")}
    meta["sha256"] = sha256_file(path)
    meta["path"] = str(path)
    return model, meta


def load_init_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load a state dict (raw, or inside an edgecxr checkpoint) into ``model``.

    Keys whose shapes do not fit (an ImageNet head, say) are skipped and returned.
    """
    path = Path(path)
    blob = _load_file(path, "weights file")
    sd = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise EdgeCXRError("no state dict in weights file", path)
    own = model.state_dict()
    keep = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = sorted(set(sd) - set(keep))
    if not keep:
        raise EdgeCXRError("no tensor in the weights file fits MobileNetV2 at this width", path)
    model.load_state_dict(keep, strict=False)
    return skipped


@torch.no_grad()
def predict_logits(model: nn.Module, batch_iter, threads: int | None = None) -> torch.Tensor:
    model.eval()
    outs = [model(torch.from_numpy(b)) for b in batch_iter]
    return torch.cat(outs).float()
