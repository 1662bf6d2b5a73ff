#!/usr/bin/env python
"""Int8 recipe study: every quantization recipe of every backend, judged against its fp32 twin
on the validation images and on the shift stress set, with size and latency side by side.

For each checkpoint: fp32 bundles for rpi (LiteRT), nuc (OpenVINO) and jetson (ONNX Runtime),
and one int8 bundle per recipe in ``edgecxr.host.export.recipes`` (all calibrated on the same
calibration set); then ``edgecxr.device.gate`` on the validation images (against the PyTorch float
reference in each manifest) and on the stress set (against the fp32 twin run here), and
``edgecxr.device.bench`` latency (batch 1, p50) for every int8 bundle in the same run.

    python benchmarks/quantization/study.py models/mnv2-ref.pt models/mnv2-ref-pruned50.pt \\
        --data data/kermany224-val --calibration calibration/kermany224 --stress-images 200

Writes results-<device>.json and quantization-<device>.md beside this script (the tables
in benchmarks/quantization.md are copied from there); bundles go under --work and are
reused when present (so an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"rpi": "litert", "nuc": "openvino", "jetson": "onnxruntime"}
NAMES = {"rpi": "rpi4", "nuc": "nuc", "jetson": "jetson-orin-nano"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "kermany224-val")
    ap.add_argument("--calibration", type=Path, default=ROOT / "calibration" / "kermany224")
    ap.add_argument("--stress-images", type=int, default=200, help="source images of the stress set (0 = all)")
    ap.add_argument("--severity", default="1,2,3")
    ap.add_argument("--targets", default="rpi,nuc,jetson")
    ap.add_argument("--recipes", default="", help="limit to these recipe names (comma separated)")
    ap.add_argument("--calib-stress", default="", help="also run these recipes calibrated with stress-corrupted copies")
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "quant-study")
    ap.add_argument("--results-dir", type=Path, default=HERE)
    a = ap.parse_args(argv)

    from edgecxr.device.bench import BenchConfig, run, subject_from_bundle
    from edgecxr.device.gate import gate
    from edgecxr.host.export import export_bundle, load_eval_set
    from edgecxr.host.export.recipes import names as recipe_names
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.errors import GateFailure
    from edgecxr.shared.preprocess import PreprocessConfig
    from edgecxr.shared.stress import make_stress_set
    from edgecxr.shared.sysinfo import default_device_name, device_facts

    t0 = time.time()
    a.work.mkdir(parents=True, exist_ok=True)
    stress = a.work / f"stress-{a.stress_images}"
    if not stress.exists():
        print(f"stress set -> {stress}", flush=True)
        make_stress_set(a.data, stress, seed=0, severities=[int(s) for s in a.severity.split(",")],
                        max_images=a.stress_images)
    only = {r for r in a.recipes.split(",") if r}
    targets = [t for t in a.targets.split(",") if t]
    results: list[dict[str, Any]] = []
    for ck in a.checkpoints:
        pp = PreprocessConfig.from_dict(read_checkpoint(ck)["preprocess"])
        ev = load_eval_set(pp, None, a.data)
        mname = ck.stem
        out = a.work / mname
        int8s, fp32s = [], []
        for t in targets:
            cs_names = {r for r in a.calib_stress.split(",") if r}
            plan = [("fp32", None, 0)] + [("int8", r, 0) for r in recipe_names(TARGETS[t]) if not only or r in only]
            plan += [("int8", r, 1) for r in recipe_names(TARGETS[t]) if r in cs_names]
            for prec, rec, cs in plan:
                name = f"{mname}-{NAMES[t]}-{prec}" + (f"-{rec}" if rec else "") + ("-cs" if cs else "")
                if not (out / name / "manifest.json").exists():
                    print(f"export {name}", flush=True)
                    export_bundle(ck, t, prec, out, data=a.data, calibration=a.calibration, force=True,
                                  name=name, log=lambda *_: None, archive=False, eval_set=ev, quant=rec,
                                  calib_stress=cs)
                (int8s if prec == "int8" else fp32s).append(out / name)
        details = out / "gate.json"
        print(f"gate {len(int8s)} int8 bundles of {mname} on validation + stress", flush=True)
        try:
            gate(int8s, None, 0.003, 0.99, summary=out / "gate.md", log=lambda *_: None, stress=stress,
                 references=fp32s, details=details)
        except GateFailure:
            pass
        g = json.loads(details.read_text())
        by_bundle: dict[str, list[dict[str, Any]]] = {}
        for r in g["rows"]:
            by_bundle.setdefault(r["bundle"], []).append(r)
        pooled = {}
        for p in g["pairs"]:
            if p["images"].startswith("stress:"):
                d = pooled.setdefault(p["bundle"], {"y": [], "f": [], "q": [], "thr": p["threshold"]})
                d["y"] += p["labels"]
                d["f"] += p["p_fp32"]
                d["q"] += p["p"]
        from edgecxr.device.paired import compare

        for b in int8s:
            subj = subject_from_bundle(b)
            print(f"latency {b.name}", flush=True)
            lat = run(subj, None, BenchConfig(warmup=5, iterations=a.iterations, accuracy=False),
                      log=lambda *_: None)["latency_ms"]
            rows = by_bundle.get(subj.name, [])
            ref = next((r for r in rows if r["images"] == "reference"), None)
            st = [r for r in rows if r["images"].startswith("stress:")]
            d = pooled.get(subj.name)
            pool = compare(np.array(d["y"]), np.array(d["f"]), np.array(d["q"]), d["thr"]) if d else {}
            m = json.loads((b / "manifest.json").read_text())
            worst_agree = min(st, key=lambda r: r["agreement"]) if st else None
            worst_drop = max(st, key=lambda r: r["auc_drop"]) if st else None
            results.append({
                "model": mname, "target": NAMES[next(t for t in targets if TARGETS[t] == subj.backend)],
                "backend": subj.backend,
                "recipe": m["conversion"]["recipe"]["name"] + (" + stress calib" if (m.get("calibration") or {}).get("stress_augmented") else ""),
                "saturation_safe": m["conversion"]["recipe"]["saturation_safe"],
                "size_mb": subj.model_bytes / 1e6, "p50_ms": lat["p50"],
                "ref": {k: ref[k] for k in ("n", "agreement", "auc_drop", "mean_abs_diff", "max_abs_diff")} if ref else None,
                "stress_pooled": {k: pool.get(k) for k in ("n", "label_agreement", "auc_drop", "mean_abs_prob_diff",
                                                           "max_abs_prob_diff")},
                "stress_worst_agreement": ({"corruption": worst_agree["images"][7:], "agreement": worst_agree["agreement"]}
                                           if worst_agree else None),
                "stress_worst_drop": ({"corruption": worst_drop["images"][7:], "auc_drop": worst_drop["auc_drop"]}
                                      if worst_drop else None),
                "stress_rows": [{k: r[k] for k in ("images", "n", "agreement", "auc_drop", "mean_abs_diff")} for r in st],
            })
    dev = default_device_name()
    doc = {"kind": "edgecxr-quant-study", "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "python " + " ".join(shlex.quote(x) for x in [str(Path(__file__).relative_to(ROOT)), *(argv or sys.argv[1:])]),
           "device": dev, "device_facts": device_facts(), "stress": json.loads((stress / "manifest.json").read_text())["recipe"],
           "stress_images": a.stress_images, "limits": {"min_agreement": 0.99, "max_auc_drop": 0.003},
           "seconds": round(time.time() - t0), "results": results}
    a.results_dir.mkdir(parents=True, exist_ok=True)
    (a.results_dir / f"results-{dev}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (a.results_dir / f"quantization-{dev}.md").write_text(render(doc))
    print(render(doc))
    return 0


def render(doc: dict[str, Any]) -> str:
    f = doc["device_facts"]
    lines = [f"## {doc['device']}", "",
             f"{f['cpu_model']}, {f['cores']} cores, {f['machine']}; CPU flags {', '.join(f['cpu_flags'])}; "
             f"int8 ISA class **{f.get('int8_isa')}** ({f.get('int8_isa_note')}). {doc['time']}, {doc['seconds']} s.", "",
             f"Command: `{doc['command']}`", "",
             f"Stress set: {doc['stress_images']} validation images x corruptions {', '.join(list(doc['stress']['corruptions']))} "
             f"x severities {doc['stress']['severities']} (seed {doc['stress']['seed']}). Limits: agreement >= "
             f"{doc['limits']['min_agreement']}, AUC drop <= {doc['limits']['max_auc_drop']} on every row.", "",
             "| model | target | recipe | 7-bit safe | size MB | p50 ms | val agreement | val AUC drop | stress agreement (pooled) | "
             "stress AUC drop (pooled) | worst corruption: agreement | worst corruption: AUC drop | meets limits |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    lim = doc["limits"]
    for r in doc["results"]:
        ref, sp = r["ref"] or {}, r["stress_pooled"] or {}
        wa, wd = r["stress_worst_agreement"] or {}, r["stress_worst_drop"] or {}
        ok = (ref.get("agreement", 0) >= lim["min_agreement"] and ref.get("auc_drop", 1) <= lim["max_auc_drop"]
              and all(x["agreement"] >= lim["min_agreement"] and x["auc_drop"] <= lim["max_auc_drop"]
                      for x in r["stress_rows"]))
        lines.append(
            f"| {r['model']} | {r['target']} | {r['recipe']} | {'yes' if r['saturation_safe'] else 'no'} | "
            f"{r['size_mb']:.2f} | {r['p50_ms']:.2f} | {ref.get('agreement', float('nan')):.4f} | "
            f"{ref.get('auc_drop', float('nan')):+.4f} | {sp.get('label_agreement') or float('nan'):.4f} | "
            f"{sp.get('auc_drop') or float('nan'):+.4f} | {wa.get('corruption', '-')} {wa.get('agreement', float('nan')):.4f} | "
            f"{wd.get('corruption', '-')} {wd.get('auc_drop', float('nan')):+.4f} | {'**yes**' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
