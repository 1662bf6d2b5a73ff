"""Did quantization change what the model looks at? int8 heatmaps against their fp32 twin (device side).

Per image: the Pearson correlation of the two signed occlusion maps (log-odds drops, same grid,
same images) and the overlap (IoU) of their top-decile regions of evidence for the fp32 call.
An image is flagged when the correlation falls below a limit, a map is flat, or the calls differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 0 else float("nan")


def top_iou(a: np.ndarray, b: np.ndarray, q: float = 0.9) -> float:
    """IoU of the pixels above each map's own q-quantile."""
    ma, mb = a >= np.quantile(a, q), b >= np.quantile(b, q)
    u = np.logical_or(ma, mb).sum()
    return float(np.logical_and(ma, mb).sum() / u) if u else float("nan")


def distribution(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if x == x], np.float64)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)), "p10": float(np.quantile(v, 0.1)),
            "p05": float(np.quantile(v, 0.05)), "min": float(v.min()), "max": float(v.max())}


def compare_rows(rows: list[dict[str, Any]], trows: list[dict[str, Any]], maps: dict[str, np.ndarray],
                 tmaps: dict[str, np.ndarray], min_corr: float) -> dict[str, Any]:
    """Pairs, a summary, HTML cards and a markdown table for explained images of a bundle and its twin."""
    ok = [r for r in rows if not r.get("error")]
    by_file = {r["file"]: r for r in trows}
    pairs = []
    for r in ok:
        t = by_file[r["file"]]
        name = r["png"][: -len(".png")]
        a, b = maps[name], tmaps[name]
        sign = 1.0 if t["prob"] >= t["threshold"] else -1.0
        rr = pearson(a, b)
        iou = top_iou(sign * a, sign * b)
        reasons = []
        if rr != rr:
            reasons.append("flat map")
        elif rr < min_corr:
            reasons.append(f"r {rr:.2f} < {min_corr}")
        if r["label"] != t["label"]:
            reasons.append(f"call {t['label']} -> {r['label']}")
        pairs.append({"file": r["file"], "png": r["png"], "reference_png": t["png"], "r": rr, "top10_iou": iou,
                      "prob": r["prob"], "reference_prob": t["prob"], "label": r["label"],
                      "reference_label": t["label"], "seconds": r["seconds"], "reference_seconds": t["seconds"],
                      "flag": bool(reasons), "why": "; ".join(reasons)})
    rs = [p["r"] for p in pairs]
    ious = [p["top10_iou"] for p in pairs]
    flagged = [p for p in pairs if p["flag"]]
    summary = {"compare": {"min_corr": min_corr, "r": distribution(rs), "top10_iou": distribution(ious),
                           "n_flagged": len(flagged), "flagged": [p["file"] for p in flagged],
                           "seconds_per_image": distribution([p["seconds"] for p in pairs]),
                           "reference_seconds_per_image": distribution([p["reference_seconds"] for p in pairs])}}
    cards = []
    for p in sorted(pairs, key=lambda p: (not p["flag"], p["r"] if p["r"] == p["r"] else -2)):
        cards.append({"title": f"{p['file'].rsplit('/', 1)[-1]}   r = {p['r']:.3f}   top-10% IoU {p['top10_iou']:.2f}",
                      "images": [(p["png"], f"this bundle: {p['label']} p={p['prob']:.3f}"),
                                 (p["reference_png"], f"reference: {p['reference_label']} p={p['reference_prob']:.3f}")],
                      "lines": [f"flagged: {p['why']}"] if p["flag"] else [], "flag": p["flag"]})
    d = summary["compare"]["r"]
    note = (f"{len(pairs)} images; heatmap correlation r median {d.get('median', float('nan')):.3f}, "
            f"10th percentile {d.get('p10', float('nan')):.3f}, min {d.get('min', float('nan')):.3f}; "
            f"{len(flagged)} flagged (r < {min_corr}, a flat map, or a different call), shown first.")
    md = ["| n | r median | r p10 | r p05 | r min | top-10% IoU median | flagged |", "|---|---|---|---|---|---|---|"]
    di = summary["compare"]["top10_iou"]
    if d.get("n"):
        md.append(f"| {len(pairs)} | {d['median']:.3f} | {d['p10']:.3f} | {d['p05']:.3f} | {d['min']:.3f} | "
                  f"{di.get('median', float('nan')):.3f} | {len(flagged)} |")
    md += ["", "| flagged file | r | why |", "|---|---|---|"]
    md += [f"| {p['file']} | {p['r']:.3f} | {p['why']} |" for p in flagged]
    return {"pairs": pairs, "summary": summary, "cards": cards, "note": note, "markdown": "\n".join(md) + "\n"}
