"""The settings of a training run: :class:`TrainConfig`, the named recipes, and replaying a saved run.

No torch here: the command line reads its ``train`` defaults from :class:`TrainConfig` at import
time, and a board imports the command line.  A run writes ``config.json`` (its ``"train"`` part
is ``asdict(TrainConfig)``); :func:`load_run_config` reads it back for ``edgecxr train --config``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgecxr.shared.errors import EdgeCXRError

# Named training recipes: what `edgecxr train --recipe NAME` sets before the explicit options.
RECIPES: dict[str, dict[str, Any]] = {
    # the seed paper's: rotations and flips only
    "paper": {"rotation": 10.0, "hflip": True, "zoom": 0.0, "translate": 0.0, "intensity": 0.0,
              "noise": 0.0, "blur": 0.0, "mixup": 0.0, "ema": 0.0, "label_smoothing": 0.0},
    # acquisition-aware augmentation: field of view (zoom, shift), exposure/contrast/gamma,
    # detector noise and focus; JPEG, resampling and quantum noise are left out on purpose so
    # that the stress set keeps families the model never trained on
    "acquisition": {"rotation": 10.0, "hflip": True, "zoom": 0.15, "translate": 0.06, "intensity": 0.3,
                    "noise": 0.03, "blur": 1.2, "mixup": 0.0, "ema": 0.0, "label_smoothing": 0.0},
}
RECIPES["robust"] = {**RECIPES["acquisition"], "label_smoothing": 0.1, "ema": 0.999}
RECIPES["robust-mixup"] = {**RECIPES["robust"], "mixup": 0.2}

DEFAULT_RECIPE = "acquisition"  # measured best, benchmarks/training.md
DEFAULT_THRESHOLD_RULE = "sens=0.95"  # held best under shift, benchmarks/training.md
_D = RECIPES[DEFAULT_RECIPE]


@dataclass
class TrainConfig:
    """Every knob of a run; the defaults are what ``edgecxr train`` runs with no options (the acquisition recipe)."""

    split: str
    out: str
    size: int = 224
    width_mult: float = 1.0
    init: str = "none"  # none | imagenet | PATH
    freeze_blocks: int = 0  # freeze the first K blocks of model.features
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    min_lr: float = 1e-6
    patience: int = 5
    rotation: float = _D["rotation"]  # degrees, uniform in [-r, r]
    hflip: bool = _D["hflip"]
    class_weighting: bool = True
    label_smoothing: float = _D["label_smoothing"]
    # acquisition-aware augmentation (0 = off; the "paper" recipe uses none of them)
    zoom: float = _D["zoom"]  # random scale in [1/(1+z), 1+z] (zoom in and out)
    translate: float = _D["translate"]  # random shift, fraction of the image size
    intensity: float = _D["intensity"]  # exposure, contrast and gamma jitter strength
    noise: float = _D["noise"]  # max Gaussian noise sigma (grey 0..1)
    blur: float = _D["blur"]  # max Gaussian blur sigma in pixels at 224 px
    mixup: float = _D["mixup"]  # Beta(a, a) mixup alpha (0 = off)
    ema: float = _D["ema"]  # EMA decay of the weights used for validation and best.pt (0 = off)
    recipe: str = DEFAULT_RECIPE  # the recipe the augmentation fields came from ("custom": none)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int = 0  # 0 = all cores
    max_train: int = 0  # 0 = all; >0 caps the training images (quick runs)
    max_val: int = 0
    threshold_rule: str = DEFAULT_THRESHOLD_RULE  # youden | sens=X | spec=X on validation
    data_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def default(name: str) -> Any:
    """The default of TrainConfig field ``name`` (what the command line shows and uses)."""
    for f in fields(TrainConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


def apply_recipe(cfg: TrainConfig, name: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A copy of cfg with recipe ``name``'s settings, then ``overrides`` (explicit options) on top."""
    if name not in RECIPES:
        raise EdgeCXRError(f"unknown training recipe {name!r}; choose one of {', '.join(RECIPES)}")
    vals = {**asdict(cfg), **RECIPES[name], **(overrides or {}), "recipe": name}
    return TrainConfig(**vals)


def load_run_config(path: str | Path) -> dict[str, Any]:
    """The ``"train"`` settings a run saved in its config.json, checked against :class:`TrainConfig`."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeCXRError("run config not found", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise EdgeCXRError(f"not a readable run config (JSON): {str(exc).splitlines()[0]}", path) from None
    train = saved.get("train") if isinstance(saved, dict) else None
    if not isinstance(train, dict):
        raise EdgeCXRError('not a run config: no "train" settings (expected RUN/config.json from `edgecxr train`)',
                           path)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train) - known)
    if unknown:
        raise EdgeCXRError(f"unknown training settings {', '.join(unknown)} (written by another edgecxr release?)",
                           path)
    try:
        TrainConfig(**{"split": "", "out": "", **train})
    except TypeError as exc:
        raise EdgeCXRError(f"bad training settings: {exc}", path) from None
    return train


def resolve_train_config(given: dict[str, Any], *, saved: dict[str, Any] | None = None, recipe: str | None = None,
                         augmentation: dict[str, Any] | None = None) -> TrainConfig:
    """The settings to run: ``saved`` (a replayed run, or none), then ``given`` on top; then recipe
    ``recipe`` when one is named, and the explicit ``augmentation`` options last.

    Without a recipe the augmentation fields stay as saved (a replay keeps what the run used).
    """
    vals = {**(saved or {}), **given}
    missing = [k for k in ("split", "out") if not vals.get(k)]
    if missing:
        raise EdgeCXRError(f"edgecxr train needs {' and '.join('--' + k for k in missing)} (or --config RUN/config.json)")
    cfg = TrainConfig(**vals)
    if recipe is not None:
        return apply_recipe(cfg, recipe, augmentation)
    return replace(cfg, **(augmentation or {}))
