"""PNG plots (matplotlib, optional on the device)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import io

    from .fsutil import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_history(history: list[dict], path: str | Path) -> None:
    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    ax[0].plot(ep, [h["val_loss"] for h in history], "o-", label="val loss")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("class-weighted cross-entropy")
    ax[0].legend()
    ax[1].plot(ep, [h["val_auc"] for h in history], "o-", label="val AUC")
    ax[1].plot(ep, [h["val_acc@0.5"] for h in history], "o-", label="val accuracy @0.5")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylim(0.5, 1.0)
    ax[1].legend()
    fig.suptitle("MobileNetV2 training (validation split)")
    _save(fig, Path(path))
    plt.close(fig)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
             thr_points: dict[str, float] | None = None, title: str = "ROC (validation split)") -> None:
    from .metrics import binary_metrics, roc_auc, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} AUC {roc_auc(y, s):.4f}")
        if thr_points and name in thr_points:
            bm = binary_metrics(y, s, thr_points[name])
            ax.plot([1 - bm.specificity], [bm.sensitivity], "o")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, Path(path))
    plt.close(fig)
