"""The accuracy gate: quantized against float, on the identical images (device side).

Fails (exit 1) when a bundle's AUC drop against its float reference exceeds
``max_auc_drop`` or its label agreement at the operating threshold falls below
``min_agreement``.  Prints a table and writes a markdown summary for CI pages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bench import BenchConfig, run, subject_from_bundle
from .errors import GateFailure
from .fsutil import atomic_write_text


@dataclass
class GateRow:
    bundle: str
    precision: str
    backend: str
    n: int
    auc_float: float
    auc: float
    auc_drop: float
    ci: tuple[float, float]
    p: float
    agreement: float
    verdict: str
    reason: str


def gate(bundles: list[str | Path], data: str | Path | None = None, max_auc_drop: float = 0.005,
         min_agreement: float = 0.98, summary: str | Path | None = None, log=print) -> list[GateRow]:
    rows: list[GateRow] = []
    for b in bundles:
        subj = subject_from_bundle(b)
        rec = run(subj, data, BenchConfig(warmup=0, iterations=0, latency=False), device="gate", log=log)
        v = rec["vs_float"] or {}
        if not v.get("matched") or "auc_drop" not in v:
            rows.append(GateRow(subj.name, subj.precision, subj.backend, int(v.get("matched", 0)), float("nan"),
                                float("nan"), float("nan"), (float("nan"),) * 2, float("nan"), float("nan"), "FAIL",
                                v.get("note", "no float reference to compare with")))
            continue
        reasons = []
        if v["auc_drop"] > max_auc_drop:
            reasons.append(f"AUC drop {v['auc_drop']:.4f} > {max_auc_drop}")
        if v["label_agreement"] < min_agreement:
            reasons.append(f"agreement {v['label_agreement']:.4f} < {min_agreement}")
        rows.append(GateRow(subj.name, subj.precision, subj.backend, v["matched"], v["auc_float"], v["auc"],
                            v["auc_drop"], tuple(v["auc_drop_ci95"]), v["delong_p"], v["label_agreement"],
                            "FAIL" if reasons else "PASS", "; ".join(reasons) or "within limits"))
    text = render(rows, max_auc_drop, min_agreement)
    log(text)
    if summary is None and os.environ.get("GITHUB_STEP_SUMMARY"):
        summary = os.environ["GITHUB_STEP_SUMMARY"]
    if summary:
        atomic_write_text(summary, text + "\n")
    failed = [r for r in rows if r.verdict != "PASS"]
    if failed:
        raise GateFailure(f"gate failed for {len(failed)} of {len(rows)} bundle(s): "
                          + "; ".join(f"{r.bundle}: {r.reason}" for r in failed), rows=rows)
    return rows


def render(rows: list[GateRow], max_auc_drop: float, min_agreement: float) -> str:
    lines = [f"### edgecxr gate: quantized vs float (max AUC drop {max_auc_drop}, min agreement {min_agreement})", "",
             "| bundle | backend | n | AUC float | AUC bundle | AUC drop [95% CI] | DeLong p | agreement | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.bundle} | {r.backend} | {r.n} | {r.auc_float:.4f} | {r.auc:.4f} | "
                     f"{r.auc_drop:+.4f} [{r.ci[0]:+.4f}, {r.ci[1]:+.4f}] | {r.p:.3f} | {r.agreement:.4f} | "
                     f"**{r.verdict}**{'' if r.verdict == 'PASS' else ': ' + r.reason} |")
    return "\n".join(lines)


def to_dicts(rows: list[GateRow]) -> list[dict[str, Any]]:
    from dataclasses import asdict

    return [asdict(r) for r in rows]
