"""LiteRT int8: does layer-by-layer bias correction remove the upward shift against fp32? (issue 26)

The same *selection set* as ``ort_ablation.py``: ``--images`` validation images drawn by
``stress.select`` with ``--seed`` from those the CI gate's stress set (100 images, seed 0) leaves
out, plus their stress corruptions (10 kinds x 3 severities, same seed), rounded to 8 bits as the
PNGs on disk are. Each variant is built by the product's own converter
(``edgecxr.host.export.litert.convert`` with a recipe) and run by LiteRT (XNNPACK, 2 threads) next
to the fp32 .tflite of the same checkpoint, on the same arrays.

Reported per variant: mean signed and absolute logit-margin difference (int8 - fp32; a positive
mean is int8 reading higher), mean |p difference|, flipped calls at the checkpoint's threshold
(upward / downward), flips among arrays whose fp32 p lies within 0.05 of the threshold, and the
worst group's agreement. ``NAME@key=N`` sets one integer recipe parameter (for example
``pt2e-histogram-bc@bias_correction=256``). A ``+dropout`` variant keeps the eval-mode Dropout node that the converter
now removes (``litert._without_dropout``): the file as exported before that fix.

    python benchmarks/quantization/litert_ablation.py models/mnv2-ref.pt --out benchmarks/quantization/litert-ablation
"""

from __future__ import annotations

import argparse
import dataclasses
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

VARIANTS = ("pt2e-histogram+dropout", "pt2e-histogram", "pt2e-histogram-bc", "pt2e-minmax", "pt2e-minmax-bc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap, "litert-ablation")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()

    from ai_edge_litert.interpreter import Interpreter

    from edgecxr.host.export.litert import convert
    from edgecxr.host.export.recipes import get_recipe

    a.out.mkdir(parents=True, exist_ok=True)
    sel = selection_set(a.checkpoint, a.data, a.calibration, a.images, a.seed)
    model, cfg_size, thr, calib, grp = sel.model, sel.size, sel.threshold, sel.calib, sel.groups
    x = np.ascontiguousarray(np.transpose(sel.x, (0, 2, 3, 1)))
    print(f"{a.checkpoint}: selection {sel.images} images (none of CI's {sel.ci_images}), seed {a.seed}, {len(x)} arrays, "
          f"threshold {thr:.3f}", flush=True)

    def margins(path: Path) -> np.ndarray:
        it = Interpreter(model_path=str(path), num_threads=2)
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        out = []
        for xb in x:
            v = xb[None]
            if i["dtype"] != np.float32:
                s, z = i["quantization"]
                v = np.clip(np.round(v / s + z), -128, 127).astype(i["dtype"])
            it.set_tensor(i["index"], v)
            it.invoke()
            r = it.get_tensor(o["index"]).astype(np.float32)
            if o["dtype"] != np.float32:
                s, z = o["quantization"]
                r = (r - z) * s
            out.append(r[0])
        lg = np.stack(out)
        return lg[:, 1] - lg[:, 0]

    work = Path(tempfile.mkdtemp(prefix="litert-ablation-", dir=a.out))
    convert(model, cfg_size, 3, None, "fp32", work)
    ref = margins(work / "model.tflite")
    pref = 1 / (1 + np.exp(-ref))
    near = np.abs(pref - thr) <= 0.05

    def score(name: str) -> dict:
        import edgecxr.host.export.litert as lt

        t = time.time()
        d = work / "q"
        d.mkdir(exist_ok=True)
        strip = lt._without_dropout
        if name.endswith("+dropout"):
            lt._without_dropout = lambda m: (m, 0)
        base, _, over = name.removesuffix("+dropout").partition("@")  # NAME@key=int overrides a parameter
        recipe = get_recipe("litert", base)
        if over:
            k, _, v = over.partition("=")
            recipe = dataclasses.replace(recipe, name=name, params={**recipe.params, k: int(v)})
        try:
            conv = convert(model, cfg_size, 3, calib, "int8", d, recipe)
        finally:
            lt._without_dropout = strip
        secs = time.time() - t
        m = margins(d / "model.tflite")
        pi = 1 / (1 + np.exp(-m))
        flip = (pi >= thr) != (pref >= thr)
        per = {g: float(1 - flip[grp == g].mean()) for g in np.unique(grp)}
        worst = min(per, key=per.get)
        r = {"variant": name, "mean_dmargin": float((m - ref).mean()), "mean_abs_dmargin": float(np.abs(m - ref).mean()),
             "mean_abs_dp": float(np.abs(pi - pref).mean()), "flips": int(flip.sum()),
             "flips_up": int((flip & (pi > pref)).sum()), "flips_down": int((flip & (pi < pref)).sum()),
             "near": int(near.sum()), "near_flips": int((flip & near).sum()), "n": len(flip),
             "worst_group": worst, "worst_agreement": per[worst], "agreement": per,
             "bias_correction": conv.details.get("bias_correction"), "export_seconds": round(secs, 1)}
        print(f"{name:20s} mean dm {r['mean_dmargin']:+.4f} |dm| {r['mean_abs_dmargin']:.4f} |dp| {r['mean_abs_dp']:.4f} "
              f"flips {r['flips']}/{r['n']} (up {r['flips_up']}, down {r['flips_down']}; near {r['near_flips']}/{r['near']}) "
              f"worst {worst} {per[worst]:.4f} (export {secs:.0f} s)", flush=True)
        return r

    rows = [score(v) for v in a.variants.split(",") if v]
    res = {"checkpoint": str(a.checkpoint), "threshold": thr, "images": sel.images, "seed": a.seed, "arrays": len(x),
           "groups": {g: int((grp == g).sum()) for g in np.unique(grp)}, "variants": rows}
    dst = a.out / f"{a.checkpoint.stem}-seed{a.seed}.json"
    dst.write_text(json.dumps(res, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print("wrote", dst)


if __name__ == "__main__":
    main()
