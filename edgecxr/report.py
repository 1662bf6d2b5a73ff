"""``edgecxr report``: benchmarks/results/*.jsonl -> benchmarks/RESULTS.md + PNG plots."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from .bench import read_results
from .errors import DataError
from .fsutil import atomic_write_text
from .sysinfo import INT8_ISA_NOTES


def _isa(r: dict[str, Any]) -> str:
    from .sysinfo import int8_isa

    f = r.get("device_facts") or {}
    return f.get("int8_isa") or int8_isa(set(f.get("cpu_flags") or []), f.get("machine") or "")


def latest_per_subject(records: list[dict[str, Any]]) -> dict[str, OrderedDict[str, dict[str, Any]]]:
    """device -> subject name -> latest record (by time, then file order).

    A device name that holds records from CPUs of different int8 instruction-set classes (an
    AVX2-only and an AVX-512 VNNI machine both called ``x86_64-amd-epyc-2c``, as default names
    were before they carried the class) is split by class: their int8 numbers differ.
    """
    isas: dict[str, set[str]] = {}
    for r in records:
        isas.setdefault(r["device"], set()).add(_isa(r))
    out: dict[str, OrderedDict[str, dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["time"]):
        dev, isa = r["device"], _isa(r)
        key = dev if len(isas[dev]) == 1 or dev.endswith(f"-{isa}") else f"{dev}-{isa}"
        out.setdefault(key, OrderedDict())[r["subject"]["name"]] = r
    return out


def _fmt(v, spec=".4f", none="–"):
    return none if v is None else format(v, spec)


def row(r: dict[str, Any]) -> dict[str, Any]:
    s, lat, acc, vf = r["subject"], r.get("latency_ms") or {}, r.get("accuracy") or {}, r.get("vs_float") or {}
    return {
        "name": s["name"], "target": s["target"], "backend": s["backend"], "precision": s["precision"],
        "size_mb": s["model_bytes"] / 1e6, "p50": lat.get("p50"), "p90": lat.get("p90"),
        "ips": lat.get("throughput_ips"), "auc": acc.get("auc"), "ci": acc.get("auc_ci95"),
        "drop": vf.get("auc_drop"), "agree": vf.get("label_agreement"), "acc": acc.get("accuracy"),
        "sens": acc.get("sensitivity"), "spec": acc.get("specificity"),
        "runtime": f"{r['runtime']['runtime']} {r['runtime']['runtime_version']}",
        "device": r["runtime"]["device"], "rprec": r["runtime"]["precision"], "threads": r["config"]["threads"],
        "n": (r.get("data") or {}).get("n"),
    }


def render(by_dev: dict[str, OrderedDict[str, dict[str, Any]]], plots: dict[str, list[str]]) -> str:
    out = ["# Benchmark results", "",
           "Written by `edgecxr report` from `benchmarks/results/*.jsonl` (latest record per bundle and device). "
           "Methodology: [benchmarks/README.md](README.md). AUC figures are on the images named in each record "
           "(the validation split unless stated); they are not test-split figures.", ""]
    for dev, recs in by_dev.items():
        first = next(iter(recs.values()))
        f = first["device_facts"]
        out += [f"## {dev}", "",
                f"{f.get('board') or ''} {f['cpu_model']}, {f['cores']} cores, {f['machine']}, {f['os']}, "
                f"Python {f['python']}; CPU flags: {', '.join(f.get('cpu_flags') or []) or 'n/a'}; int8: "
                f"{INT8_ISA_NOTES.get(_isa(first), 'n/a')}.", "",
                "| bundle | backend | precision | size MB | p50 ms | p90 ms | img/s | AUC [95% CI] | AUC drop vs fp32 | agreement | accuracy | sensitivity | specificity | runtime (device, precision, threads) |",
                "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
        rows = [row(r) for r in recs.values()]
        for x in rows:
            ci = f" [{x['ci'][0]:.4f}, {x['ci'][1]:.4f}]" if x["ci"] else ""
            out.append(f"| {x['name']} | {x['backend']} | {x['precision']} | {x['size_mb']:.2f} | {_fmt(x['p50'], '.2f')} | "
                       f"{_fmt(x['p90'], '.2f')} | {_fmt(x['ips'], '.1f')} | {_fmt(x['auc'])}{ci} | {_fmt(x['drop'], '+.4f')} | "
                       f"{_fmt(x['agree'])} | {_fmt(x['acc'])} | {_fmt(x['sens'])} | {_fmt(x['spec'])} | "
                       f"{x['runtime']} ({x['device']}, {x['rprec']}, {x['threads']}) |")
        ratios = ratio_lines(rows)
        if ratios:
            out += ["", "Ratios measured in the same run on this device:", ""] + [f"- {r}" for r in ratios]
        for p in plots.get(dev, []):
            out += ["", f"![{Path(p).stem}]({p})"]
        out.append("")
    return "\n".join(out) + "\n"


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    by = {(x["backend"], x["precision"]): x for x in rows}
    for be in sorted({x["backend"] for x in rows}):
        i8, f32 = by.get((be, "int8")), by.get((be, "fp32"))
        if i8 and f32 and i8["p50"] and f32["p50"]:
            lines.append(f"{be}: int8/fp32 p50 latency {i8['p50'] / f32['p50']:.2f}x, size {i8['size_mb'] / f32['size_mb']:.2f}x")
    heavy = [x for x in rows if x["name"].startswith("baseline-")]
    for h in heavy:
        for x in rows:
            if x is h or x["name"].startswith("baseline-") or not x["p50"] or not h["p50"]:
                continue
            lines.append(f"{x['name']} vs {h['name']}: latency {x['p50'] / h['p50']:.2f}x "
                         f"({(1 - x['p50'] / h['p50']) * 100:.0f}% faster), size {x['size_mb'] / h['size_mb']:.3f}x")
    return lines


def plot_device(dev: str, recs: OrderedDict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    try:
        from .plots import _plt, _save
    except ImportError:
        return []
    try:
        plt = _plt()
    except ImportError:
        return []
    import numpy as np

    from .metrics import roc_curve

    paths = []
    rows = [row(r) for r in recs.values() if (r.get("latency_ms") or {}).get("p50")]
    if rows:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        colors = {"int8": "tab:blue", "fp32": "tab:orange"}
        for x in rows:
            ax.scatter(x["size_mb"], x["p50"], color=colors.get(x["precision"], "grey"), s=40)
            lab = f"{x['name']}" + (f"\nAUC {x['auc']:.3f}" if x["auc"] is not None else "")
            ax.annotate(lab, (x["size_mb"], x["p50"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model size on disk (MB, log)")
        ax.set_ylabel("p50 latency, batch 1 (ms, log)")
        ax.set_title(f"{dev}: latency against size (blue int8, orange fp32)")
        p = out_dir / f"{dev}-latency-size.png"
        _save(fig, p)
        plt.close(fig)
        paths.append(p)
    rocs = [r for r in recs.values() if (r.get("vs_float") or {}).get("probs")]
    if rocs:
        fig, ax = plt.subplots(figsize=(5.2, 5))
        drawn_float = False
        for r in rocs:
            v = r["vs_float"]
            y = np.array(v["labels"])
            if not drawn_float:
                fpr, tpr, _ = roc_curve(y, np.array(v["float_probs"]))
                ax.plot(fpr, tpr, "k-", lw=2, label=f"PyTorch fp32 AUC {v['auc_float']:.4f}")
                drawn_float = True
            fpr, tpr, _ = roc_curve(y, np.array(v["probs"]))
            ax.plot(fpr, tpr, lw=1, ls="--" if r["subject"]["precision"] == "int8" else ":",
                    label=f"{r['subject']['name']} AUC {v['auc']:.4f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.6)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"{dev}: ROC, float against exported bundles")
        ax.legend(fontsize=7, loc="lower right")
        p = out_dir / f"{dev}-roc.png"
        _save(fig, p)
        plt.close(fig)
        paths.append(p)
    return paths


def report(results_dir: str | Path = "benchmarks/results", out: str | Path = "benchmarks/RESULTS.md",
           plots_dir: str | Path | None = None) -> Path:
    records = read_results(results_dir)
    if not records:
        raise DataError("no benchmark records found (run `edgecxr bench` first)", results_dir)
    out = Path(out)
    plots_dir = Path(plots_dir) if plots_dir else out.parent / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    by_dev = latest_per_subject(records)
    plots = {}
    for dev, recs in by_dev.items():
        plots[dev] = [p.relative_to(out.parent).as_posix() if p.is_relative_to(out.parent) else str(p)
                      for p in plot_device(dev, recs, plots_dir)]
    atomic_write_text(out, render(by_dev, plots))
    return out
