"""``edgecxr report``: benchmarks/results/*.jsonl -> benchmarks/RESULTS.md + PNG plots."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from edgecxr.device.bench import read_results
from edgecxr.shared.errors import DataError
from edgecxr.shared.fsutil import atomic_write_text
from edgecxr.shared.sysinfo import INT8_ISA_NOTES


def _isa(r: dict[str, Any]) -> str:
    from edgecxr.shared.sysinfo import int8_isa

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
        if _emulated(r) and not key.endswith("-emulated"):  # never mixed with a real device's latency
            key = f"{key}-emulated"
        out.setdefault(key, OrderedDict())[r["subject"]["name"]] = r
    # emulated devices last
    return dict(sorted(out.items(), key=lambda kv: bool(_emulated(next(iter(kv[1].values()))))))


def _emulated(r: dict[str, Any]) -> str | None:
    return (r.get("device_facts") or {}).get("emulated")


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
                *([f"**Emulated** ({f['emulated']}): accuracy and agreement are this architecture's, latency is "
                   "the emulator's and not comparable with any real device (left out below).", ""]
                  if f.get("emulated") else []),
                "| bundle | backend | precision | size MB | p50 ms | p90 ms | img/s | AUC [95% CI] | AUC drop vs fp32 | agreement | accuracy | sensitivity | specificity | runtime (device, precision, threads) |",
                "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
        rows = [row(r) for r in recs.values()]
        if f.get("emulated"):
            rows = [{**x, "p50": None, "p90": None, "ips": None} for x in rows]
        for x in rows:
            ci = f" [{x['ci'][0]:.4f}, {x['ci'][1]:.4f}]" if x["ci"] else ""
            out.append(f"| {x['name']} | {x['backend']} | {x['precision']} | {x['size_mb']:.2f} | {_fmt(x['p50'], '.2f')} | "
                       f"{_fmt(x['p90'], '.2f')} | {_fmt(x['ips'], '.1f')} | {_fmt(x['auc'])}{ci} | {_fmt(x['drop'], '+.4f')} | "
                       f"{_fmt(x['agree'])} | {_fmt(x['acc'])} | {_fmt(x['sens'])} | {_fmt(x['spec'])} | "
                       f"{x['runtime']} ({x['device']}, {x['rprec']}, {x['threads']}) |")
        ratios = ratio_lines(rows)
        if ratios:
            out += ["", "Ratios measured in the same run on this device:", ""] + [f"- {r}" for r in ratios]
        if not f.get("emulated"):
            out += floor_lines(list(recs.values()))
        for p in plots.get(dev, []):
            out += ["", f"![{Path(p).stem}]({p})"]
        out.append("")
    return "\n".join(out) + "\n"


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    # each int8 bundle against its own fp32 twin (same name, -fp32), so that two targets of one
    # runtime (the Jetson's TensorRT form and the CPU form of ONNX Runtime) are never mixed up
    names = {x["name"]: x for x in rows}
    for i8 in rows:
        if i8["precision"] != "int8" or not i8["name"].endswith("-int8"):
            continue
        f32 = names.get(i8["name"][:-len("int8")] + "fp32")
        if f32 and i8["p50"] and f32["p50"]:
            lines.append(f"{i8['name'][:-len('-int8')]} ({i8['backend']}): int8/fp32 p50 latency "
                         f"{i8['p50'] / f32['p50']:.2f}x, size {i8['size_mb'] / f32['size_mb']:.2f}x")
    heavy = [x for x in rows if x["name"].startswith("baseline-")]
    for h in heavy:
        for x in rows:
            if x is h or x["name"].startswith("baseline-") or not x["p50"] or not h["p50"]:
                continue
            lines.append(f"{x['name']} vs {h['name']}: latency {x['p50'] / h['p50']:.2f}x "
                         f"({(1 - x['p50'] / h['p50']) * 100:.0f}% faster), size {x['size_mb'] / h['size_mb']:.3f}x")
    return lines


def floor_lines(recs: list[dict[str, Any]]) -> list[str]:
    """Each bundle's p50 against this machine's compute floor (``edgecxr.device.floor``): its model's
    FLOPs at the SGEMM rate measured in the same run (fp32) or at the int8 peak derived from it."""
    from edgecxr.device.floor import floor_ms

    lines = []
    for r in recs:
        fl, flops, p50 = r.get("compute_floor"), r["subject"].get("flops"), (r.get("latency_ms") or {}).get("p50")
        ms = floor_ms(flops, fl, r["subject"]["precision"])
        if ms and p50:
            rate = f"{fl['int8_gops']:.0f} int8 GOP/s" if r["subject"]["precision"] == "int8" else \
                f"{fl['sgemm_gflops']:.0f} GFLOP/s"
            lines.append(f"| {r['subject']['name']} | {r['subject']['precision']} | {flops / 1e9:.3f} | {rate} | "
                         f"{ms:.3g} | {p50:.3g} | {p50 / ms:.1f}x |")
    if not lines:
        return []
    return ["", "Latency against this machine's compute floor (numpy SGEMM, measured in the same bench run; int8 peak "
                "= SGEMM x int8 MACs per fp32 FMA of the instruction set, a derived upper bound):", "",
            "| bundle | precision | GFLOP per image | peak | floor ms | p50 ms | p50 / floor |",
            "|---|---|---:|---|---:|---:|---:|", *lines]


# Plot styles shared by the latency and ROC pictures: colour = precision (Okabe-Ito, safe for the
# common colour-vision deficiencies), marker / line style = backend, hollow marker = pruned model.
_PREC_COLORS = {"int8": "#0072B2", "fp32": "#E69F00", "fp16": "#009E73"}
_BACKEND_MARKERS = {"litert": "o", "openvino": "s", "onnxruntime": "^", "torch": "D"}
_BACKEND_LINES = {"litert": "-", "openvino": "--", "onnxruntime": ":", "torch": "-."}
_OTHER_COLOR, _OTHER_MARKER, _OTHER_LINE = "#CC79A7", "P", (0, (5, 1, 1, 1, 1, 1))


def _is_pruned(name: str) -> bool:
    return "pruned" in name.lower()


def _style(backend: str, precision: str) -> tuple[str, str, Any]:
    """(colour, marker, line style) of a bundle."""
    return (_PREC_COLORS.get(precision, _OTHER_COLOR), _BACKEND_MARKERS.get(backend, _OTHER_MARKER),
            _BACKEND_LINES.get(backend, _OTHER_LINE))


def _overlaps(rows: list[dict[str, Any]], tol: float = 0.03) -> list[list[dict[str, Any]]]:
    """Groups of two or more points within ``tol`` decades of each other in both size and latency."""
    import math

    groups: list[list[dict[str, Any]]] = []
    for x in sorted(rows, key=lambda x: (x["size_mb"], x["p50"])):
        for g in groups:
            if any(abs(math.log10(x["size_mb"] / m["size_mb"])) < tol and abs(math.log10(x["p50"] / m["p50"])) < tol
                   for m in g):
                g.append(x)
                break
        else:
            groups.append([x])
    return [g for g in groups if len(g) > 1]


def _plain_log_ticks(ax) -> None:
    """Log axes labelled 0.5, 1, 2 rather than 5x10^-1; minor ticks labelled too where an axis spans little."""
    import math

    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.autoscale_view()
    for axis, (a, b) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(fmt if math.log10(b / a) < 1.3 else NullFormatter())
        axis.set_tick_params(which="both", labelsize=8)


def _plot_latency_size(plt, dev: str, rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.colors import to_rgba
    from matplotlib.lines import Line2D

    from edgecxr.shared.plots import _save

    fig, (ax, lax) = plt.subplots(1, 2, figsize=(8.2, 4.6), gridspec_kw={"width_ratios": [4.2, 1]})
    by_name = {x["name"]: x for x in rows}
    # a thin line from each fp32 bundle to its int8 twin: what quantization buys on this backend
    for x in rows:
        if x["precision"] == "int8" and x["name"].endswith("-int8"):
            t = by_name.get(x["name"][:-len("int8")] + "fp32")
            if t is not None:
                ax.plot([t["size_mb"], x["size_mb"]], [t["p50"], x["p50"]], color="0.78", lw=0.8, zorder=1)
    for x in rows:
        color, marker, _ = _style(x["backend"], x["precision"])
        # translucent fill, solid edge: markers at the same place (same size and speed) stay readable
        face = "none" if _is_pruned(x["name"]) else to_rgba(color, 0.55)
        ax.scatter(x["size_mb"], x["p50"], s=58, marker=marker, zorder=3, facecolors=face, edgecolors=color,
                   linewidths=1.7)
        if x["name"].startswith("baseline-"):
            ax.annotate(x["name"], (x["size_mb"], x["p50"]), fontsize=7.5, xytext=(-8, 0), textcoords="offset points",
                        ha="right", va="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for members in _overlaps(rows):
        # markers on top of each other: one small note lists them instead of a pile of labels
        x0 = max(m["size_mb"] for m in members)
        y0 = sorted(m["p50"] for m in members)[len(members) // 2]
        text = "\n".join(f"{m['backend']} {m['precision']}{' pruned' if _is_pruned(m['name']) else ''}: "
                         f"{m['p50']:.2f} ms" for m in sorted(members, key=lambda m: -m["p50"]))
        ax.annotate(text, (x0, y0), xytext=(12, 0), textcoords="offset points", fontsize=7, ha="left",
                    va="center", color="0.2", bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.8", "lw": 0.5},
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5}, zorder=5)
    _plain_log_ticks(ax)
    ax.grid(True, which="major", color="0.88", lw=0.6)
    ax.grid(True, which="minor", color="0.95", lw=0.4)
    ax.set_axisbelow(True)
    ax.set_xlabel("model size on disk (MB, log)")
    ax.set_ylabel("p50 latency, batch 1 (ms, log)")
    ax.set_title(f"{dev}: latency against size", fontsize=11)
    backends = list(OrderedDict.fromkeys(x["backend"] for x in rows))
    precs = list(OrderedDict.fromkeys(x["precision"] for x in rows))
    grey = "0.35"
    h_backend = [Line2D([], [], ls="", marker=_style(b, "")[1], ms=7, mfc=to_rgba(grey, 0.55), mec=grey, mew=1.4,
                        label=b) for b in backends]
    h_prec = [Line2D([], [], ls="", marker="o", ms=7, mfc=to_rgba(_style("", p)[0], 0.55), mec=_style("", p)[0],
                     mew=1.4, label=p) for p in precs]
    h_fill = [Line2D([], [], ls="", marker="o", ms=7, mfc=to_rgba(grey, 0.55), mec=grey, mew=1.4, label="full"),
              Line2D([], [], ls="", marker="o", ms=7, mfc="none", mec=grey, mew=1.4, label="pruned")]
    if any(x["precision"] == "int8" and by_name.get(x["name"][:-len("int8")] + "fp32") for x in rows):
        h_fill.append(Line2D([], [], color="0.78", lw=0.8, label="fp32–int8 twins"))
    lax.set_axis_off()
    y = 1.0
    for title, hs in (("backend: shape", h_backend), ("precision: colour", h_prec), ("model: fill", h_fill)):
        leg = lax.legend(handles=hs, title=title, loc="upper left", bbox_to_anchor=(0.0, y), fontsize=8,
                         title_fontsize=8, frameon=False, alignment="left", borderaxespad=0, handletextpad=0.4)
        lax.add_artist(leg)
        y -= 0.062 * (len(hs) + 1) + 0.05
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plot_roc(plt, dev: str, rocs: list[dict[str, Any]], path: Path) -> None:
    import numpy as np

    from edgecxr.shared.metrics import roc_curve
    from edgecxr.shared.plots import _save

    groups = [(t, [r for r in rocs if _is_pruned(r["subject"]["name"]) == pr])
              for t, pr in (("full models", False), ("pruned models", True))]
    groups = [g for g in groups if g[1]]
    fig, axes = plt.subplots(len(groups), 2, figsize=(8.4, 4.6 * len(groups)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.7, 1]})
    for (ax, side), (title, recs) in zip(axes, groups, strict=True):
        curves, refs = [], {}
        for r in recs:
            v = r["vs_float"]
            y = np.asarray(v["labels"])
            if v.get("float_probs"):
                fp = np.asarray(v["float_probs"], dtype=float)
                key = (y.tobytes(), np.round(fp, 6).tobytes())
                if key not in refs:  # each distinct fp32 reference once
                    refs[key] = (roc_curve(y, fp)[:2], v.get("auc_float"))
            curves.append((r, roc_curve(y, np.asarray(v["probs"], dtype=float))[:2]))
        # zoom: the top-left corner, widened when a curve is still below it at FPR 0.3
        lo = 0.7
        for fpr, tpr in [c for c, _ in refs.values()] + [c for _, c in curves]:
            lo = min(lo, float(np.floor((np.interp(0.3, fpr, tpr) - 0.05) * 10) / 10))
        lo = max(lo, 0.0)
        # beside the zoom: the full curve (small, on top) and the legend (below it)
        full = side.inset_axes([0.16, 0.56, 0.8, 0.42])
        side.set_axis_off()
        for (fpr, tpr), auc in refs.values():
            lab = "PyTorch fp32 reference" + (f"\nAUC {auc:.4f}" if auc is not None else "")
            for a in (ax, full):
                a.plot(fpr, tpr, color="black", lw=3.2, alpha=0.25, label=lab if a is ax else None, zorder=2,
                       solid_capstyle="butt")
        names = [f"{r['subject']['backend']} {r['subject']['precision']}" for r, _ in curves]
        for (r, (fpr, tpr)), short in zip(curves, names, strict=True):
            s, v = r["subject"], r["vs_float"]
            color, marker, ls = _style(s["backend"], s["precision"])
            lab = (short if names.count(short) == 1 else s["name"]) + (f" AUC {v['auc']:.4f}" if v.get("auc") is not None else "")
            for a in (ax, full):
                a.plot(fpr, tpr, color=color, ls=ls, lw=1.4 if a is ax else 0.9, zorder=3,
                       label=lab if a is ax else None)
            acc = r.get("accuracy") or {}
            if acc.get("sensitivity") is not None and acc.get("specificity") is not None:
                ax.plot([1 - acc["specificity"]], [acc["sensitivity"]], ls="", marker=marker, ms=6.5, mfc=color,
                        mec="black", mew=0.5, zorder=4)
        ax.set_xlim(0, 0.3)
        ax.set_ylim(lo, 1.0 + (1.0 - lo) * 0.02)
        ax.set_xlabel("1 - specificity (false-positive rate)")
        ax.set_ylabel("sensitivity (true-positive rate)")
        ax.grid(True, color="0.92", lw=0.6)
        ax.set_title(f"{title} (n {len(recs[0]['vs_float']['labels'])}): top-left corner", fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        side.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.0, 0.44), fontsize=7.5, frameon=False,
                    title="colour: precision, line: backend\nmarker: operating point", title_fontsize=7.5,
                    alignment="left", borderaxespad=0)
        full.plot([0, 1], [0, 1], color="0.6", lw=0.6, ls=":")
        full.add_patch(plt.Rectangle((0, lo), 0.3, 1 - lo, fill=False, ec="0.3", lw=0.8, ls="--"))
        full.set_xlim(0, 1)
        full.set_ylim(0, 1.01)
        full.set_xticks([0, 0.5, 1])
        full.set_yticks([0, 0.5, 1])
        full.tick_params(labelsize=7, length=2)
        full.set_title("full ROC (dashed box: the zoom)", fontsize=8, pad=3)
    fig.suptitle(f"{dev}: ROC of the exported bundles against their float reference", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_device(dev: str, recs: OrderedDict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """``<dev>-latency-size.png`` and ``<dev>-roc.png`` in ``out_dir`` (those that have data); [] without matplotlib."""
    try:
        from edgecxr.shared.plots import _plt
    except ImportError:
        return []
    try:
        plt = _plt()
    except ImportError:
        return []

    paths = []
    rows = [row(r) for r in recs.values() if (r.get("latency_ms") or {}).get("p50") and not _emulated(r)]
    if rows:
        p = out_dir / f"{dev}-latency-size.png"
        _plot_latency_size(plt, dev, rows, p)
        paths.append(p)
    rocs = [r for r in recs.values() if (r.get("vs_float") or {}).get("probs")]
    if rocs:
        p = out_dir / f"{dev}-roc.png"
        _plot_roc(plt, dev, rocs, p)
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
    atomic_write_text(out, render(by_dev, plots) + explain_section(out.parent / "explain.md"))
    return out


def explain_section(explain_md: Path) -> str:
    """Beside the AUC drop, whether int8 still looks where fp32 does: the int8-vs-fp32 heatmap
    correlation table of ``explain.md`` (written from `edgecxr explain --compare` runs), if present."""
    try:
        text = explain_md.read_text()
    except OSError:
        return ""
    head = "## Did int8 change where the model looks?"
    if head not in text:
        return ""
    table = []
    for ln in text.split(head, 1)[1].splitlines():
        if ln.startswith("|"):
            table.append(ln)
        elif table:
            break
    if not table:
        return ""
    return ("\n## Where int8 looks: heatmaps of int8 against its fp32 twin\n\n"
            "Occlusion heatmaps on validation images (`edgecxr explain --compare`); r: correlation of the two maps "
            f"per image. Details, commands and what the maps show: [{explain_md.name}]({explain_md.name}).\n\n"
            + "\n".join(table) + "\n")
