"""Int8 against fp32 on this CPU for LiteRT, OpenVINO and ONNX Runtime's CPU provider, in one run.

Both shipped models to ``rpi`` (LiteRT), ``nuc`` (OpenVINO) and ``x86-ort`` (ONNX Runtime CPU, the
uint8 recipe of targets/x86-ort.toml) in int8 and fp32; every bundle benched for latency in the same
process, interleaved (p50, batch 1, the profile's threads capped at the cores here, the compute floor
measured alongside), the report written; then the new target's int8 bundles gated against their fp32
twins on the validation images and on the CI gate's stress set (100 validation images x 10
corruptions x 3 severities, seed 0) at the issue's limits (agreement >= 0.99, AUC drop <= 0.003).
(LiteRT and OpenVINO are gated by CI and `make demo` with recipes this run does not change.)

    python benchmarks/quantization/cpu_run.py --out benchmarks/quantization/ort-cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "quantization" / "ort-cpu")
    ap.add_argument("--dist", type=Path, default=ROOT / "dist" / "cpu-run")
    ap.add_argument("--targets", default="rpi,nuc,x86-ort")
    ap.add_argument("--gate-targets", default="x86-ort")
    ap.add_argument("--stress-images", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=100)
    a = ap.parse_args()

    from edgecxr.device.bench import BenchConfig, run, store, subject_from_bundle
    from edgecxr.device.gate import gate
    from edgecxr.device.report import report
    from edgecxr.host import workflows as wf
    from edgecxr.host.export import export_bundle, load_eval_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.errors import GateFailure
    from edgecxr.shared.preprocess import PreprocessConfig
    from edgecxr.shared.targets import get_target

    t0 = time.time()
    data, calib = ROOT / "data" / "kermany224-val", ROOT / "calibration" / "kermany224"
    a.out.mkdir(parents=True, exist_ok=True)
    models = wf.reference_models(ROOT / "models")
    bundles, timing = [], {}
    ev = None
    for m in models:
        pp = PreprocessConfig.from_dict(read_checkpoint(m.checkpoint)["preprocess"])
        ev = ev or load_eval_set(pp, None, data)
        for t in a.targets.split(","):
            for prec in ("int8", "fp32"):
                t1 = time.time()
                s = export_bundle(m.checkpoint, t, prec, a.dist, data=data, calibration=calib, force=True,
                                  name=f"{m.tag}-{get_target(t).name}-{prec}", log=lambda *_: None, eval_set=ev,
                                  archive=False)
                timing[Path(s["bundle"]).name] = round(time.time() - t1, 1)
                print(f"export {Path(s['bundle']).name}: agreement {s['label_agreement']:.4f}, AUC drop "
                      f"{s['auc_drop']:+.4f} ({time.time() - t1:.0f} s)", flush=True)
                bundles.append(Path(s["bundle"]))
    results = a.out / "results"
    subjects = [subject_from_bundle(b) for b in bundles]
    for s in subjects:  # latency only here: accuracy is the export check's and the gate's
        rec = run(s, data, BenchConfig(warmup=10, iterations=a.iterations, accuracy=False, floor=True), log=print)
        store(rec, results)
        print(f"bench {s.name}: p50 {rec['latency_ms']['p50']:.2f} ms", flush=True)
    report(results, a.out / "RESULTS.md")
    stress = wf.make_demo_stress(data, a.dist / f"stress-{a.stress_images}", a.stress_images, print)
    gated = [b for b in bundles if b.name.endswith("-int8") and any(f"-{get_target(t).name}-" in b.name
                                                                    for t in a.gate_targets.split(","))]
    try:
        rows = gate(gated, data, 0.003, 0.99, stress=stress, references=[b for b in bundles if b.name.endswith("-fp32")],
                    summary=a.out / "gate-summary.md", details=a.dist / "gate.json", log=lambda *_: None)
        verdict = "PASS"
    except GateFailure as e:
        rows, verdict = e.rows, f"FAIL: {e}"
    (a.out / "export-seconds.json").write_text(json.dumps(timing, indent=1) + "\n")
    print(f"gate {verdict}; {len(rows)} rows; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
