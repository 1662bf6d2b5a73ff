"""Clinical evaluation metrics, numpy only (device side).

* ROC AUC by the Mann-Whitney statistic with mid-ranks (ties count one half).
* DeLong's variance (fast algorithm of Sun & Xu, IEEE SPL 2014) for a 95%
  confidence interval, and the paired DeLong test for two scores on the same
  cases (float against int8).
* Operating threshold chosen on validation: Youden's J, or the highest
  threshold that reaches a target sensitivity.  A case is called positive when
  its probability is >= the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def _check(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).reshape(-1).astype(int)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return y, s


def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based mid-ranks of x (ties get the mean of their ranks)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks_sorted = np.empty(n, dtype=np.float64)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks_sorted[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks_sorted
    return out


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and structural components for k score rows (k x n).

    Returns (aucs[k], v10[k, m], v01[k, n_neg]).
    """
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    tx = np.empty((k, m))
    ty = np.empty((k, n))
    tz = np.empty((k, m + n))
    for r in range(k):
        tx[r] = _midrank(pos[r])
        ty[r] = _midrank(neg[r])
        tz[r] = _midrank(np.concatenate([pos[r], neg[r]]))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def roc_auc(y, s) -> float:
    y, s = _check(y, s)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or n == 0:
        raise ValueError("AUC needs both classes")
    r = _midrank(s)
    return float((r[y == 1].sum() - m * (m + 1) / 2.0) / (m * n))


@dataclass
class AucCI:
    auc: float
    lo: float
    hi: float
    se: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def auc_ci(y, s, level: float = 0.95) -> AucCI:
    """AUC with a DeLong confidence interval (normal approximation, clipped to [0,1])."""
    y, s = _check(y, s)
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        raise ValueError("AUC confidence interval needs at least two cases of each class")
    aucs, v10, v01 = _delong_components(y, s[None, :])
    m, n = v10.shape[1], v01.shape[1]
    var = np.var(v10[0], ddof=1) / m + np.var(v01[0], ddof=1) / n
    se = math.sqrt(max(var, 0.0))
    z = _z(level)
    a = float(aucs[0])
    return AucCI(a, max(0.0, a - z * se), min(1.0, a + z * se), se)


def _z(level: float) -> float:
    if abs(level - 0.95) < 1e-12:
        return Z95
    # inverse normal CDF by bisection on erf (no scipy on the device)
    target = 0.5 + level / 2.0
    lo, hi = 0.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class PairedDelong:
    auc_a: float
    auc_b: float
    diff: float  # auc_a - auc_b
    se: float
    ci_lo: float
    ci_hi: float
    z: float
    p_value: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def delong_paired(y, s_a, s_b, level: float = 0.95) -> PairedDelong:
    """DeLong test for two correlated AUCs (same cases, two scorers)."""
    y, s_a = _check(y, s_a)
    _, s_b = _check(y, s_b)
    aucs, v10, v01 = _delong_components(y, np.vstack([s_a, s_b]))
    m, n = v10.shape[1], v01.shape[1]
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(var, 0.0))
    if se == 0.0:
        zval = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
    else:
        zval = diff / se
        p = math.erfc(abs(zval) / math.sqrt(2))
    zz = _z(level)
    return PairedDelong(float(aucs[0]), float(aucs[1]), diff, se, diff - zz * se, diff + zz * se, zval, p)


def roc_curve(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), thresholds decreasing, starting at +inf."""
    y, s = _check(y, s)
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    distinct = np.where(np.diff(ss))[0]
    idx = np.r_[distinct, len(ss) - 1]
    tps = np.cumsum(yy)[idx]
    fps = (idx + 1) - tps
    P, N = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    tpr = np.r_[0.0, tps / P]
    fpr = np.r_[0.0, fps / N]
    thr = np.r_[np.inf, ss[idx]]
    return fpr, tpr, thr


def choose_threshold(y, s, method: str = "youden", target_sensitivity: float | None = None) -> float:
    """Operating threshold from validation scores.

    ``youden``: maximise sensitivity + specificity - 1.
    ``sensitivity``: highest threshold whose sensitivity >= target.

    The threshold returned lies halfway between the chosen ROC point's score and the next
    lower distinct score, so it gives the same confusion matrix on these scores as the score
    itself but does not sit exactly on one image: a threshold equal to an image's score flips
    that image under any numerical noise (another runtime, batch size, or int8).
    """
    fpr, tpr, thr = roc_curve(y, s)
    if method == "youden":
        j = tpr - fpr
        k = int(np.argmax(j[1:])) + 1
    elif method == "sensitivity":
        if target_sensitivity is None or not 0 < target_sensitivity <= 1:
            raise ValueError("target sensitivity must be in (0, 1]")
        ok = np.where(tpr[1:] >= target_sensitivity - 1e-12)[0]
        k = int(ok[0]) + 1
    else:
        raise ValueError(f"unknown threshold method {method!r} (youden or sensitivity)")
    if k + 1 < len(thr):
        return float((thr[k] + thr[k + 1]) / 2)
    return float(thr[k])


def parse_threshold_spec(spec: str) -> tuple[str, float | None]:
    """'youden' | 'sens=0.95' | 'sensitivity=0.95' -> (method, target)."""
    spec = spec.strip().lower()
    if spec == "youden":
        return "youden", None
    for prefix in ("sens=", "sensitivity="):
        if spec.startswith(prefix):
            v = float(spec[len(prefix):])
            if not 0 < v <= 1:
                raise ValueError(f"target sensitivity {v} must be in (0, 1]")
            return "sensitivity", v
    raise ValueError(f"threshold rule {spec!r}: use 'youden' or 'sens=0.95'")


@dataclass
class BinaryMetrics:
    threshold: float
    accuracy: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    tn: int
    fp: int
    fn: int
    tp: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: int, b: int) -> float:
    return float(a) / b if b else float("nan")


def binary_metrics(y, s, threshold: float) -> BinaryMetrics:
    y, s = _check(y, s)
    pred = (s >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    return BinaryMetrics(float(threshold), _ratio(tp + tn, len(y)), _ratio(tp, tp + fn),
                         _ratio(tn, tn + fp), _ratio(tp, tp + fp), _ratio(tn, tn + fn), tn, fp, fn, tp)


def summarize(y, s, threshold: float) -> dict[str, Any]:
    """AUC [95% DeLong CI] and threshold metrics in one flat-ish dict."""
    y, s = _check(y, s)
    ci = auc_ci(y, s)
    bm = binary_metrics(y, s, threshold)
    return {
        "n": int(len(y)),
        "n_pos": int(y.sum()),
        "n_neg": int((1 - y).sum()),
        "auc": ci.auc,
        "auc_ci95": [ci.lo, ci.hi],
        "auc_se": ci.se,
        **bm.to_dict(),
    }


def softmax_pos(logits: np.ndarray) -> np.ndarray:
    """Probability of class 1 from N x 2 logits (numerically stable)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 2 and logits.shape[1] == 2:
        d = logits[:, 1] - logits[:, 0]
    else:
        d = logits.reshape(-1)
    return 1.0 / (1.0 + np.exp(-d))


# ---------------------------------------------------------------- calibration
def expected_calibration_error(y, p, bins: int = 15) -> float:
    """ECE of p(pneumonia) against the labels: equal-width bins, weighted |observed rate - mean p|.

    The binary form (the reliability of p for the positive class), the one reliability diagrams
    of a two-class model show; computed from the diagram's own bins.
    """
    rb = reliability_bins(y, p, bins)
    n = sum(b["n"] for b in rb)
    return float(sum(b["n"] / n * abs(b["rate"] - b["mean_p"]) for b in rb if b["n"]))


def reliability_bins(y, p, bins: int = 15) -> list[dict[str, float]]:
    """Per bin: mean p, observed pneumonia rate and count (for the reliability diagram)."""
    y, p = _check(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                    "mean_p": float(p[m].mean()) if m.any() else float("nan"),
                    "rate": float(y[m].mean()) if m.any() else float("nan")})
    return out


def logit_of(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def fit_temperature(y, p) -> float:
    """Temperature T minimising the NLL of sigmoid(logit(p) / T) on (y, p): Guo et al. 2017.

    For a two-class softmax, logit(p) is the difference of the two logits, so dividing the
    classifier's weights and bias by T gives the same probabilities.  A 1-D search over log T.
    """
    y, p = _check(y, p)
    z = logit_of(p)

    def nll(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / math.exp(log_t))), 1e-12, 1 - 1e-12)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())

    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


def apply_temperature(p, t: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit_of(p) / float(t)))
