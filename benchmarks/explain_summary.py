"""Tables for benchmarks/explain.md from `edgecxr explain` output folders (explain.json in each).

    python benchmarks/explain_summary.py dist/explain-val/nuc dist/explain-val/rpi4 ... [--gradcam DIR ...]

Compare folders (made with --compare FP32_TWIN) give the int8/fp32 heatmap-correlation row and the
time per image of both bundles; --gradcam folders (a checkpoint explained on the host) give a
time row. Times: wall seconds per image (median) and CPU seconds of the process per image
(median; all runtime threads added up), which a busy shared machine inflates much less.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's edgecxr


def _med(rows: list[dict], key: str) -> float:
    v = [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]
    return float(np.median(v)) if v else float("nan")


def _central(rows: list[dict], label: str, folder: Path) -> str:
    """Median share of the call's evidence in the central 60% x 60% box / in the top 20% of the rows."""
    from edgecxr.device.explain import central_share, evidence

    cs, top = [], []
    for r in rows:
        if r.get("label") != label:
            continue
        h = np.load(folder / r["heat"])
        pos = r["label"] == "PNEUMONIA"
        cs.append(r["central_share"] if r.get("central_share") is not None else central_share(h, pos))
        e = evidence(h, pos)
        top.append(float(e[: int(0.2 * len(e))].sum() / max(e.sum(), 1e-12)))
    return f"{np.median(cs):.2f} / {np.median(top):.2f} (n={len(cs)})" if cs else "–"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="*", type=Path)
    ap.add_argument("--gradcam", nargs="*", type=Path, default=[])
    ap.add_argument("--maps", nargs=2, type=Path, action="append", default=[], metavar=("A", "B"),
                    help="correlate the maps of two folders on their common images (A[/reference] B)")
    a = ap.parse_args()
    corr = ["| int8 bundle | fp32 twin | images | r median | r p10 | r p05 | r min | top-10% IoU median | flagged (r < min, flat, other call) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    times = ["| model | runtime | precision | method | passes/image | images | s/image wall (median) | CPU s/image (median) | evidence in central box / top 20% rows, NORMAL calls | same, PNEUMONIA calls |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for d in a.folders:
        s = json.loads((d / "explain.json").read_text())
        c = s.get("compare")
        ok = [r for r in s["rows"] if not r.get("error")]
        if c:
            r = c["r"]
            corr.append(f"| {s['model']} | {s['reference']['model']} | {r['n']} | {r['median']:.3f} | {r['p10']:.3f} | "
                        f"{r['p05']:.3f} | {r['min']:.3f} | {c['top10_iou']['median']:.3f} | {c['n_flagged']}"
                        + (f": {', '.join(Path(f).name for f in c['flagged'])}" if c["flagged"] else "") + " |")
        sets = [(s["model"], s["backend"], s["precision"], ok)]
        if s.get("reference"):
            ref = s["reference"]
            sets.append((ref["model"], ref["backend"], ref["precision"], ref["rows"]))
        for name, be, prec, rows in sets:
            times.append(f"| {name} | {be} | {prec} | {rows[0].get('method', 'occlusion')} | {rows[0].get('forwards', '–')} | "
                         f"{len(rows)} | {_med(rows, 'seconds'):.2f} | {_med(rows, 'cpu_seconds'):.2f} | "
                         f"{_central(rows, 'NORMAL', d)} | {_central(rows, 'PNEUMONIA', d)} |")
    for d in a.gradcam:
        s = json.loads((d / "explain.json").read_text())
        ok = [r for r in s["rows"] if not r.get("error")]
        times.append(f"| {s['model']} | {s['backend']} | {s['precision']} | {s['method']} | 1 forward + 1 backward | {len(ok)} | "
                     f"{_med(ok, 'seconds'):.2f} | {_med(ok, 'cpu_seconds'):.2f} | {_central(ok, 'NORMAL', d)} | "
                     f"{_central(ok, 'PNEUMONIA', d)} |")
    print("\n".join(corr) + "\n\n" + "\n".join(times))
    for x, y in a.maps:
        print("\n" + maps_line(x, y))


def _rows(folder: Path) -> tuple[Path, dict[str, dict]]:
    """``DIR`` or ``DIR/reference`` (the fp32 twin's maps of a compare folder)."""
    if folder.name == "reference" and not (folder / "explain.json").exists():
        s = json.loads((folder.parent / "explain.json").read_text())
        return folder.parent, {r["file"]: r for r in s["reference"]["rows"]}
    s = json.loads((folder / "explain.json").read_text())
    return folder, {r["file"]: r for r in s["rows"] if not r.get("error")}


def maps_line(x: Path, y: Path) -> str:
    from edgecxr.device.explain import evidence
    from edgecxr.device.explain_compare import pearson

    dx, rx = _rows(x)
    dy, ry = _rows(y)
    by: dict[str, list[float]] = {}
    for f in sorted(set(rx) & set(ry)):
        pos = rx[f]["label"] == "PNEUMONIA"
        a, b = np.load(dx / rx[f]["heat"]), np.load(dy / ry[f]["heat"])
        if a.shape != b.shape:
            continue
        by.setdefault(rx[f]["label"], []).append(pearson(evidence(a, pos), evidence(b, pos)))
        by.setdefault("signed, all", []).append(pearson(a, b))
    return f"maps {x} vs {y}: " + "; ".join(
        f"{k} n={len(v)} median r {np.nanmedian(v):.2f} p10 {np.nanquantile(v, 0.1):.2f}" for k, v in by.items())


if __name__ == "__main__":
    main()
