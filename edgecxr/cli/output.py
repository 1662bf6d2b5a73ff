"""Text output shared by the command-line modules (`cli`, `cli_link`): one place, no import cycle."""

from __future__ import annotations

import typer


def print_bench(rec: dict, path) -> None:
    s, lat = rec["subject"], rec["latency_ms"]
    acc, vf = rec.get("accuracy") or {}, rec.get("vs_float") or {}
    auc = f"{acc['auc']:.4f}" if acc.get("auc") is not None else "-"
    drop = f"{vf['auc_drop']:+.4f}" if vf.get("auc_drop") is not None else "-"
    agree = f"{vf['label_agreement']:.3f}" if vf.get("label_agreement") is not None else "-"
    rt = rec["runtime"]
    typer.echo(f"{s['name']:<28} {s['model_bytes'] / 1e6:>8.2f} {lat['p50']:>8.2f} {lat['p90']:>8.2f} "
               f"{lat['throughput_ips']:>7.1f} {auc:>7} {drop:>8} {agree:>6}  {rt['runtime']} {rt['runtime_version']} "
               f"({rt['device']}, {rt['precision']}, {rec['config']['threads']} threads)"
               + (f" -> {path}" if path else ""))
    for n in rt.get("notes") or []:
        typer.echo(f"  note: {n}")
    if vf.get("against") == "fp32 twin bundle" or vf.get("fp32_twin"):
        t = vf.get("fp32_twin") or vf
        p = t.get("delong_p")
        typer.echo(f"  vs fp32 twin {t['reference_bundle']}: n={t['n']} AUC drop {t.get('auc_drop', float('nan')):+.4f}"
                   + (f" (DeLong p {p:.3f})" if p is not None else "")
                   + f"  agreement {t['label_agreement']:.4f}  flipped {len(t['flipped'])}")
        for f in t["flipped"][:10]:
            typer.echo(f"    flipped: {f['path']} (label {f['label']}) p fp32 {f['p_fp32']:.3f} -> {f['p']:.3f}")
