"""ONNX Runtime int8 on a CPU: which form MLAS runs fastest, int8 against fp32 latency side by side.

Two steps, so the timing can run where torch is not installed (the emulated arm64 board):

    # host: the fp32 ONNX and one int8 file per form, from the product's converter
    python benchmarks/quantization/ort_cpu.py build models/mnv2-ref.pt runs/ort-cpu/ref
    # anywhere with onnxruntime: every file of the folder, interleaved rounds, p50 per file and int8/fp32
    python benchmarks/quantization/ort_cpu.py time runs/ort-cpu/ref --threads 2 --out results.json
    tools/board_arm64.sh run python benchmarks/quantization/ort_cpu.py time runs/ort-cpu/ref --rounds 6

Forms (all per-channel weights, 7-bit weights via ``reduce_range`` so AVX2 without VNNI cannot
saturate, MinMax calibration on 32 images: the form, not the calibration, decides the speed):
s8 = symmetric int8 activations (the TensorRT form of the Jetson file), u8 = asymmetric uint8
activations; qdq = QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into integer
kernels at load, qop = QOperator (QLinearConv and friends written out); fsN = first N convolutions
left float.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FORMS = {
    "s8-qdq-fs4": {"float_stem": 4},
    "s8-qdq": {},
    "u8-qdq": {"activations": "u8"},
    "u8-qop": {"activations": "u8", "format": "qoperator"},
    "u8-qdq-fs1": {"activations": "u8", "float_stem": 1},
    "u8-qdq-fs2": {"activations": "u8", "float_stem": 2},
    "u8-qdq-fs4": {"activations": "u8", "float_stem": 4},
}


def build(a) -> None:
    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.export.onnx import convert
    from edgecxr.host.export.recipes import Recipe
    from edgecxr.host.model import load_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

    model, meta = load_checkpoint(a.checkpoint)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    calib = [preprocess_grey(g, pp) for g in load_calibration_set(a.calibration).greys][:32]
    for name, params in {"fp32": None, **{k: FORMS[k] for k in a.forms.split(",")}}.items():
        d = a.out / name
        d.mkdir(parents=True, exist_ok=True)
        if params is None:
            convert(model, pp.size, pp.channels, None, "fp32", d)
        else:
            convert(model, pp.size, pp.channels, calib, "int8", d,
                    Recipe(name, "onnxruntime", name, {"calibrate_method": "minmax", "reduce_range": True, **params}))
        print("built", d / "model.onnx", flush=True)
    np.save(a.out / "input.npy", calib[0][None].astype(np.float32))


def time_forms(a) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.log_severity_level = 3
    names = sorted(p.name for p in a.folder.iterdir() if (p / "model.onnx").exists())
    names = ["fp32"] + [n for n in names if n != "fp32"]
    sess = {n: ort.InferenceSession(str(a.folder / n / "model.onnx"), so, providers=["CPUExecutionProvider"])
            for n in names}
    x = np.load(a.folder / "input.npy")
    for s in sess.values():
        for _ in range(a.warmup):
            s.run(None, {"input": x})
    ms: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(a.rounds):  # interleaved: every form sees the same machine load
        for n in names:
            for _ in range(a.per_round):
                t = time.perf_counter()
                sess[n].run(None, {"input": x})
                ms[n].append((time.perf_counter() - t) * 1000)
    f = float(np.median(ms["fp32"]))
    rows = [{"form": n, "p50_ms": float(np.median(ms[n])), "int8_over_fp32": float(np.median(ms[n])) / f,
             "n": len(ms[n])} for n in names]
    for r in rows:
        print(f"{r['form']:12s} p50 {r['p50_ms']:8.2f} ms   /fp32 {r['int8_over_fp32']:.2f}", flush=True)
    from edgecxr.shared.sysinfo import device_facts

    facts = device_facts()
    res = {"folder": str(a.folder), "threads": a.threads, "rounds": a.rounds, "per_round": a.per_round,
           "onnxruntime": ort.__version__, "machine": platform.machine(),
           "device": {k: facts[k] for k in ("cpu_model", "cores", "cpu_flags", "int8_isa", "emulated")},
           "rows": rows}
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("checkpoint", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--calibration", type=Path, default=ROOT / "calibration" / "kermany224")
    b.add_argument("--forms", default=",".join(FORMS))
    t = sub.add_parser("time")
    t.add_argument("folder", type=Path)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--rounds", type=int, default=30)
    t.add_argument("--per-round", type=int, default=5)
    t.add_argument("--warmup", type=int, default=10)
    t.add_argument("--out", type=Path)
    a = ap.parse_args()
    build(a) if a.cmd == "build" else time_forms(a)


if __name__ == "__main__":
    main()
