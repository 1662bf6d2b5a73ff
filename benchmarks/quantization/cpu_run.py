"""Int8 against fp32 on this CPU for LiteRT, OpenVINO and ONNX Runtime's CPU provider, in one run.

Both shipped models to ``rpi`` (LiteRT), ``nuc`` (OpenVINO) and ``x86-ort`` (ONNX Runtime CPU, the
uint8 recipe of targets/x86-ort.toml) in int8 and fp32, every bundle benched in the same process
(p50 batch 1, the compute floor measured alongside), the report written, and every int8 bundle gated
against its fp32 twin on the validation images and on the CI gate's stress set (100 validation images
x 10 corruptions x 3 severities, seed 0) at the issue's limits (agreement >= 0.99, AUC drop <= 0.003).
This is the same tail `make demo` runs (``workflows.export_bench_report_gate``), with the CPU ONNX
Runtime target in place of the Jetson.

    python benchmarks/quantization/cpu_run.py --out benchmarks/quantization/ort-cpu
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--stress-images", type=int, default=100)
    a = ap.parse_args()

    from edgecxr.host import workflows as wf

    wf.TARGETS = tuple(a.targets.split(","))
    t0 = time.time()
    data, calib = ROOT / "data" / "kermany224-val", ROOT / "calibration" / "kermany224"
    stress = wf.make_demo_stress(data, a.dist / f"stress-{a.stress_images}", a.stress_images, print)
    a.out.mkdir(parents=True, exist_ok=True)
    tail = wf.export_bench_report_gate(wf.reference_models(ROOT / "models"), a.dist, a.out / "results",
                                       a.out / "RESULTS.md", print, eval_dir=data, calibration=calib,
                                       max_auc_drop=0.003, min_agreement=0.99, stress=stress,
                                       gate_summary=a.out / "gate-summary.md", gate_details=a.dist / "gate.json")
    print(tail.table)
    print(f"gate: {'FAIL ' + str(tail.failure) if tail.failure else 'PASS'}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
