"""ONNX Runtime int8 (Jetson file): which layers to keep float and whether to correct biases.

Measured on a *selection set* that shares no image with the CI gate's stress set: ``--images``
validation images drawn by ``stress.select`` with ``--seed`` from those the CI set (100 images,
seed 0) leaves out, plus their stress corruptions (10 kinds x 3 severities, same seed), rounded
to 8 bits as the PNGs on disk are. Each variant is built by the product's own converter
(``edgecxr.host.export.onnx.convert`` with a recipe) and run by ONNX Runtime's CPU provider next
to the fp32 ONNX of the same checkpoint, on the same arrays.

Reported per variant: mean |logit margin difference|, mean |p difference|, flipped calls at the
checkpoint's threshold, and the worst group's agreement (clean, or one corruption pooled over
severities). ``--sensitivity N`` also quantizes with one node at a time left float, for the first
N convolution/Gemm/Add nodes (about 40 s each on 2 cores).

    python benchmarks/quantization/ort_ablation.py models/mnv2-ref-pruned50.pt --out runs/ort-ablation
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from selection import add_arguments, selection_set  # noqa: E402

VARIANTS = {  # name -> recipe params beyond {"calibrate_method": "minmax", "reduce_range": True}
    "minmax-rr": {},
    "minmax-rr-bc": {"bias_correction": 64},
    "minmax-rr-fs2": {"float_stem": 2},
    "minmax-rr-fs2-bc": {"float_stem": 2, "bias_correction": 64},
    "minmax-rr-fs4": {"float_stem": 4},
    "minmax-rr-fs4-bc": {"float_stem": 4, "bias_correction": 64},
    "percentile-rr-fs4-bc": {"calibrate_method": "percentile", "percentile": 99.999, "float_stem": 4,
                             "bias_correction": 64},
    # ONNX Runtime on a CPU (issue 28): asymmetric uint8 activations (MLAS's u8 x s8 kernels), 7-bit weights
    "u8-minmax-rr-bc": {"activations": "u8", "bias_correction": 64},
    "u8-percentile-rr-bc": {"activations": "u8", "calibrate_method": "percentile", "percentile": 99.999,
                            "bias_correction": 64},
    "u8-percentile-rr-fs1-bc": {"activations": "u8", "calibrate_method": "percentile", "percentile": 99.999,
                                "float_stem": 1, "bias_correction": 64},
    "u8-percentile-rr-fs2-bc": {"activations": "u8", "calibrate_method": "percentile", "percentile": 99.999,
                                "float_stem": 2, "bias_correction": 64},
    "u8-percentile-rr-fs4-bc": {"activations": "u8", "calibrate_method": "percentile", "percentile": 99.999,
                                "float_stem": 4, "bias_correction": 64},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap, "ort-ablation")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sensitivity", type=int, default=0)
    a = ap.parse_args()

    import onnx
    import onnxruntime as ort

    from edgecxr.host.export.onnx import convert
    from edgecxr.host.export.recipes import Recipe

    a.out.mkdir(parents=True, exist_ok=True)
    sel = selection_set(a.checkpoint, a.data, a.calibration, a.images, a.seed)
    model, cfg_size, thr, calib, grp = sel.model, sel.size, sel.threshold, sel.calib, sel.groups
    x = sel.x
    print(f"{a.checkpoint}: selection {sel.images} images (none of CI's {sel.ci_images}), seed {a.seed}, {len(x)} arrays, "
          f"threshold {thr:.3f}", flush=True)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3

    def margins(path: Path) -> np.ndarray:
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        lg = np.concatenate([s.run(None, {"input": x[i:i + 32]})[0] for i in range(0, len(x), 32)])
        return lg[:, 1] - lg[:, 0]

    work = Path(tempfile.mkdtemp(prefix="ort-ablation-", dir=a.out))
    convert(model, cfg_size, 3, None, "fp32", work)
    ref = margins(work / "model.onnx")
    pref = 1 / (1 + np.exp(-ref))
    nodes = [n.name for n in onnx.load(str(work / "model.onnx")).graph.node if n.op_type in ("Conv", "Gemm", "Add")]

    def score(name: str, params: dict) -> dict:
        t = time.time()
        p = {"calibrate_method": "minmax", "reduce_range": True, **params}
        d = work / "q"
        d.mkdir(exist_ok=True)
        conv = convert(model, cfg_size, 3, calib, "int8", d, Recipe(name, "onnxruntime", name, p))
        m = margins(d / "model.onnx")
        pi = 1 / (1 + np.exp(-m))
        flip = (pi >= thr) != (pref >= thr)
        per = {g: float(1 - flip[grp == g].mean()) for g in np.unique(grp)}
        worst = min(per, key=per.get)
        r = {"variant": name, "params": p, "mean_abs_dmargin": float(np.abs(m - ref).mean()),
             "mean_abs_dp": float(np.abs(pi - pref).mean()), "flips": int(flip.sum()), "n": len(flip),
             "worst_group": worst, "worst_agreement": per[worst], "agreement": per,
             "float_nodes": conv.details.get("float_nodes", []), "seconds": round(time.time() - t, 1)}
        print(f"{name:28s} mean|dm| {r['mean_abs_dmargin']:.4f} mean|dp| {r['mean_abs_dp']:.4f} "
              f"flips {r['flips']}/{r['n']} worst {worst} {per[worst]:.4f} ({r['seconds']:.0f} s)", flush=True)
        return r

    rows = [score(v, VARIANTS[v]) for v in a.variants.split(",") if v]
    sens = [score(f"float:{n}", {"float_nodes": [n]}) for n in nodes[:a.sensitivity]]
    res = {"checkpoint": str(a.checkpoint), "threshold": thr, "images": sel.images, "seed": a.seed, "arrays": len(x),
           "groups": {g: int((grp == g).sum()) for g in np.unique(grp)}, "variants": rows, "sensitivity": sens}
    dst = a.out / f"{a.checkpoint.stem}-seed{a.seed}.json"
    dst.write_text(json.dumps(res, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print("wrote", dst)


if __name__ == "__main__":
    main()
