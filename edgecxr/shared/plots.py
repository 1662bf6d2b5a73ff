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

    from edgecxr.shared.fsutil import atomic_write_bytes

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
    from edgecxr.shared.metrics import binary_metrics, roc_auc, roc_curve

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


def plot_reliability(bins: list[dict], ece: float, path: str | Path, where: str = "validation") -> None:
    """Reliability diagram: observed pneumonia rate against mean p per bin, bar widths by count."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    xs = [b["mean_p"] for b in bins if b["n"]]
    ys = [b["rate"] for b in bins if b["n"]]
    ns = [b["n"] for b in bins if b["n"]]
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.plot(xs, ys, "o-", color="#0072B2", label=f"model (ECE {ece:.3f})")
    for x, y, n in zip(xs, ys, ns, strict=True):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=6)
    ax.set_xlabel("mean p(PNEUMONIA) in bin")
    ax.set_ylabel("observed PNEUMONIA rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability ({where})", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, Path(path))
    plt.close(fig)


# Okabe-Ito colours (safe for the common colour-vision deficiencies)
_LABEL_COLORS = {0: "#0072B2", 1: "#E69F00"}  # NORMAL blue, PNEUMONIA orange
_LABEL_NAMES = {0: "NORMAL", 1: "PNEUMONIA"}
_FLIP_EDGE = "#D00000"
_SEVERITY_SIZE = {1: 7.0, 2: 16.0, 3: 30.0}
_REFERENCE_SIZE = 12.0


def _num(v, spec: str, none: str = "n/a") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return none
    return none if f != f else format(f, spec)


def _drop(v) -> str:
    """An AUC drop to 4 decimals; a non-zero one too small for that in 2 significant digits."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if f != f else format(f, "+.1e" if 0 < abs(f) < 5e-5 else "+.4f")


def _load_gate_details(path: Path) -> dict:
    import json

    from edgecxr.shared.errors import DataError

    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"cannot read the gate details file ({e.strerror or e})", path) from None
    try:
        d = json.loads(text)
    except ValueError as e:
        raise DataError(f"not a JSON file ({e})", path) from None
    if not isinstance(d, dict) or d.get("kind") != "edgecxr-gate":
        kind = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise DataError(f"not an `edgecxr gate --details` file (kind {kind!r}, expected 'edgecxr-gate')", path)
    pairs, rows = d.get("pairs") or [], d.get("rows") or []
    if not isinstance(pairs, list) or not isinstance(rows, list):
        raise DataError("'pairs' and 'rows' must be lists", path)
    for i, p in enumerate(pairs):
        miss = [k for k in ("bundle", "images", "labels", "p_fp32", "p") if not isinstance(p, dict) or k not in p]
        if miss:
            raise DataError(f"pair {i} lacks {', '.join(miss)}", path)
        n = len(p["labels"])
        lens = {len(p["p_fp32"]), len(p["p"])} | ({len(p["severity"])} if p.get("severity") is not None else set())
        if lens != {n}:
            raise DataError(f"pair {i} ({p['bundle']} on {p['images']}): labels, probabilities and severities "
                            "differ in length", path)
    return d


def _gate_panel(ax, pair: dict, row: dict | None, precision: str) -> None:
    y = np.asarray(pair["labels"], dtype=int)
    x = np.asarray(pair["p_fp32"], dtype=float)
    q = np.asarray(pair["p"], dtype=float)
    thr = float(pair.get("threshold") if pair.get("threshold") is not None else 0.5)
    sev = pair.get("severity")
    size = (np.array([_SEVERITY_SIZE.get(int(s), 16.0) for s in sev]) if sev is not None
            else np.full(len(y), _REFERENCE_SIZE))
    flip = (x >= thr) != (q >= thr)
    lo, hi = -0.03, 1.03
    # the two quadrants where a call flips, lightly shaded
    ax.fill_between([lo, thr], thr, hi, color=_FLIP_EDGE, alpha=0.05, lw=0, zorder=0)
    ax.fill_between([thr, hi], lo, thr, color=_FLIP_EDGE, alpha=0.05, lw=0, zorder=0)
    ax.plot([0, 1], [0, 1], color="0.35", lw=0.7, ls=":", zorder=1)
    ax.axvline(thr, color="0.25", lw=0.8, ls="--", zorder=1)
    ax.axhline(thr, color="0.25", lw=0.8, ls="--", zorder=1)
    for lab in (0, 1):
        m = (y == lab) & ~flip
        ax.scatter(x[m], q[m], s=size[m], c=_LABEL_COLORS[lab], alpha=0.45, lw=0, zorder=2)
    for lab in (0, 1):
        m = (y == lab) & flip
        ax.scatter(x[m], q[m], s=np.maximum(size[m], 12) * 3.2, c=_LABEL_COLORS[lab], marker="D",
                   edgecolors=_FLIP_EDGE, linewidths=1.6, zorder=4)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xticks([0, 0.5, 1])
    ax.set_yticks([0, 0.5, 1])
    ax.tick_params(labelsize=7, length=2)
    nflip = int(flip.sum())
    if nflip:
        ax.text(0.03, 0.97, f"{nflip} flipped", transform=ax.transAxes, ha="left", va="top", fontsize=7.5,
                color=_FLIP_EDGE, fontweight="bold", zorder=5)
    verdict = (row or {}).get("verdict") or "no verdict"
    head = f"{pair['images']}: {verdict}"
    if row is None:
        stats = f"n {len(y)} (no gate row)"
    else:
        stats = (f"n {row.get('n', len(y))} · agree {_num(row.get('agreement'), '.3f')} · "
                 f"AUC drop {_drop(row.get('auc_drop'))}")
    failed = verdict != "PASS"
    ax.set_title(f"{head}\n{stats}", fontsize=7.5, color=_FLIP_EDGE if failed else "black",
                 fontweight="bold" if failed else "normal", pad=3)
    if failed:
        for s in ax.spines.values():
            s.set_edgecolor(_FLIP_EDGE)
            s.set_linewidth(1.8)


def int8_vs_fp32(details_json: str | Path, out_dir: str | Path) -> list[Path]:
    """One PNG per bundle from ``edgecxr gate --details FILE``: quantized against fp32 probabilities.

    A grid of scatter panels (reference images first, then one per stress corruption): x the
    fp32 probability of pneumonia, y the quantized one, on the same images; the diagonal, the
    operating threshold in both directions, colour the true label, red-edged diamonds the
    images whose call flips across the threshold; marker size the stress severity.
    Returns the written paths ([] when the file holds no probability pairs).
    """
    import math
    import re

    details_json, out_dir = Path(details_json), Path(out_dir)
    d = _load_gate_details(details_json)
    pairs = d.get("pairs") or []
    if not pairs:
        return []
    plt = _plt()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = [r for r in d.get("rows") or [] if isinstance(r, dict)]
    by_bundle: dict[str, list[dict]] = {}
    for p in pairs:
        by_bundle.setdefault(str(p["bundle"]), []).append(p)
    written = []
    for bundle, bp in by_bundle.items():
        bp = sorted(bp, key=lambda p: str(p["images"]).startswith("stress"))  # stable: reference/data first
        brows = [r for r in rows if r.get("bundle") == bundle]
        lookup = {r.get("images"): r for r in brows}
        precision = next((r.get("precision") for r in brows if r.get("precision")), "int8")
        backend = next((r.get("backend") for r in brows if r.get("backend")), "")
        n = len(bp)
        ncols = min(4, n + 1)  # one cell more than panels: the legend's
        nrows = math.ceil((n + 1) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.75 * ncols, 2.9 * nrows + 0.6), squeeze=False,
                                 sharex=True, sharey=True)
        cells = list(axes.flat)
        for ax, p in zip(cells, bp, strict=False):
            _gate_panel(ax, p, lookup.get(p["images"]), precision)
        for i, ax in enumerate(cells[:n]):
            if i + ncols >= n:  # no panel below: x ticks and label here
                ax.set_xlabel("p(pneumonia), fp32", fontsize=8)
                ax.xaxis.set_tick_params(labelbottom=True)
            if i % ncols == 0:
                ax.set_ylabel(f"p(pneumonia), {precision}", fontsize=8)
        for ax in cells[n:]:
            ax.set_axis_off()
        handles = [Line2D([], [], ls="", marker="o", ms=6, mfc=_LABEL_COLORS[k], mec="none",
                          label=f"true {_LABEL_NAMES[k]}") for k in (0, 1)]
        handles.append(Line2D([], [], ls="", marker="D", ms=7, mfc="white", mec=_FLIP_EDGE, mew=1.6,
                              label="flipped call (fill: true label)"))
        handles.append(Line2D([], [], color="0.25", ls="--", lw=0.8, label="operating threshold"))
        handles.append(Patch(facecolor=_FLIP_EDGE, alpha=0.08, edgecolor="none", label="calls differ here"))
        handles.append(Line2D([], [], color="0.35", ls=":", lw=0.7, label=f"{precision} = fp32"))
        if any(p.get("severity") is not None for p in bp):
            handles += [Line2D([], [], ls="", marker="o", ms=math.sqrt(s), mfc="0.45", mec="none",
                               label=f"stress severity {k}") for k, s in _SEVERITY_SIZE.items()]
        cells[n].legend(handles=handles, loc="center", fontsize=7.5, frameon=False, title="marks",
                        title_fontsize=8)
        nfail = sum(1 for r in brows if r.get("verdict") != "PASS")
        verdict = f"gate FAIL on {nfail} of {len(brows)} image sets" if nfail else f"gate PASS on all {len(brows)} image sets"
        thr = bp[0].get("threshold")
        fig.suptitle(f"{bundle}{f' ({backend})' if backend else ''}: {precision} against fp32 on the same images\n"
                     f"{verdict}; limits: AUC drop ≤ {_num(d.get('max_auc_drop'), 'g')}, "
                     f"agreement ≥ {_num(d.get('min_agreement'), 'g')}; threshold {_num(thr, '.3f')}",
                     fontsize=10, color=_FLIP_EDGE if nfail else "black")
        fig.tight_layout()
        safe = re.sub(r"[^\w.+-]+", "_", bundle).strip("._") or "bundle"
        path = out_dir / f"{safe}-vs-fp32.png"
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written
