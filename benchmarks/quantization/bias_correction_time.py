"""Bias correction cost: the graph cut at each layer against the whole graph run once per layer.

For each checkpoint, the ONNX Runtime int8 export (``edgecxr export --target jetson --precision
int8``, the default recipe with bias correction on 64 calibration images) is made twice in one
process, side by side: with ``qdq_bias.correct_biases`` (the cut graph) and with
``qdq_bias.correct_biases_reference`` (the whole int8 graph once per layer, the algorithm before
issue 28). Printed and written: the export and conversion seconds of each, and whether the two
model files are byte-identical.

    python benchmarks/quantization/bias_correction_time.py models/mnv2-ref.pt models/mnv2-ref-pruned50.pt
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "kermany224-val")
    ap.add_argument("--calibration", type=Path, default=ROOT / "calibration" / "kermany224")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "quantization" / "bias-correction-time.json")
    a = ap.parse_args()

    from edgecxr.host.export import export_bundle, load_eval_set, qdq_bias
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.fsutil import sha256_file
    from edgecxr.shared.preprocess import PreprocessConfig
    from edgecxr.shared.sysinfo import device_facts

    fast = qdq_bias.correct_biases
    work = Path(tempfile.mkdtemp(prefix="bc-time-"))
    rows = []
    try:
        for ck in a.checkpoints:
            ev = load_eval_set(PreprocessConfig.from_dict(read_checkpoint(ck)["preprocess"]), None, a.data)
            got = {}
            for how, fn in (("cut graph", fast), ("whole graph per layer", qdq_bias.correct_biases_reference)):
                qdq_bias.correct_biases = lambda q, f, imgs, log=None, _fn=fn: _fn(q, f, imgs)
                s = export_bundle(ck, "jetson", "int8", work / how.replace(" ", "-"), data=a.data,
                                  calibration=a.calibration, log=lambda *_: None, archive=False, eval_set=ev,
                                  force=True)
                m = json.loads((Path(s["bundle"]) / "manifest.json").read_text())
                got[how] = {"export_s": m["export_seconds"]["total"], "convert_s": m["export_seconds"]["convert"],
                            "model_sha256": sha256_file(Path(s["bundle"]) / "model.onnx"),
                            "bias_correction": m["conversion"].get("bias_correction")}
                print(f"{ck.name}: {how}: export {got[how]['export_s']:.1f} s (convert {got[how]['convert_s']:.1f} s)",
                      flush=True)
            qdq_bias.correct_biases = fast
            same = got["cut graph"]["model_sha256"] == got["whole graph per layer"]["model_sha256"]
            rows.append({"checkpoint": ck.name, **got, "identical_model_file": same,
                         "export_ratio": got["cut graph"]["export_s"] / got["whole graph per layer"]["export_s"]})
            print(f"{ck.name}: identical model file: {same}", flush=True)
    finally:
        qdq_bias.correct_biases = fast
        shutil.rmtree(work, ignore_errors=True)
    f = device_facts()
    a.out.write_text(json.dumps({"machine": {k: f[k] for k in ("cpu_model", "cores", "cpu_flags", "int8_isa")},
                                 "rows": rows}, indent=1) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
