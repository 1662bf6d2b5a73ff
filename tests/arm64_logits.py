"""Dump a bundle's logits on some images, for comparing machines (run by tests/test_arm64.py).

    python tests/arm64_logits.py BUNDLE OUT.npz IMAGE... [--inputs SAVED.npz] [--option KEY=JSON ...] [--reference]

Runs on the host (x86) and inside the emulated arm64 board with the device side only (the installed
edgecxr, no torch). Writes the preprocessed inputs it computed (``x``), the logits (``logits``), the
backend's info and the machine (``meta``, JSON). ``--inputs`` feeds another machine's saved inputs
instead, so that a runtime is compared on bit-identical inputs.

``--reference`` runs an int8 ONNX or OpenVINO bundle as its graph says in float arithmetic instead of
the runtime's integer kernels: every quantize/dequantize pair (ONNX QDQ, OpenVINO FakeQuantize)
rounds to the int8 grid, every convolution computes in fp32. ONNX Runtime with its graph
optimizations off runs QDQ that way; for OpenVINO each FakeQuantize is rewritten into the
clamp/round/scale arithmetic of its specification, which the CPU plugin cannot fuse into int8
kernels. Integer kernels that are exact up to their final requantization stay within a rounding
step or so of this reference at every layer.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import numpy as np

from edgecxr.device.backends import open_backend
from edgecxr.device.bundle import verify
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.preprocess import preprocess_grey


def _ov_fake_quant_in_float(model):
    from openvino import opset13 as ops

    for n in list(model.get_ordered_ops()):
        if n.get_type_name() != "FakeQuantize":
            continue
        x, il, ih, ol, oh = (n.input_value(i) for i in range(5))
        steps = float(n.get_attributes()["levels"] - 1)
        c = ops.minimum(ops.maximum(x, il), ih)
        q = ops.round(ops.multiply(ops.divide(ops.subtract(c, il), ops.subtract(ih, il)), ops.constant(steps, np.float32)),
                      "half_to_even")
        y = ops.add(ops.multiply(ops.divide(q, ops.constant(steps, np.float32)), ops.subtract(oh, ol)), ol)
        for t in list(n.output(0).get_target_inputs()):
            t.replace_source_output(y.output(0))
    model.validate_nodes_and_infer_types()
    return model


def float_reference(bundle, feed: np.ndarray) -> tuple[np.ndarray, dict]:
    """The int8 graph in float arithmetic (see the module's docstring)."""
    path = str(bundle.model_path)
    if bundle.manifest["backend"] == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        out = [s.run(None, {name: feed[i:i + 1].astype(np.float32)})[0] for i in range(len(feed))]
        return np.concatenate(out), {"reference": "onnxruntime, graph optimizations off (QDQ in float)"}
    if bundle.manifest["backend"] == "openvino":
        import openvino as ov

        core = ov.Core()
        m = _ov_fake_quant_in_float(core.read_model(path))
        c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"})
        r = c.create_infer_request()
        out = [np.asarray(next(iter(r.infer({0: feed[i:i + 1].astype(np.float32)}).values()))) for i in range(len(feed))]
        return np.concatenate(out), {"reference": "openvino, FakeQuantize rewritten as float clamp/round/scale"}
    raise SystemExit(f"--reference: no float reference for backend {bundle.manifest['backend']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("out")
    ap.add_argument("images", nargs="*")
    ap.add_argument("--inputs")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--option", action="append", default=[], help="backend option KEY=JSON")
    ap.add_argument("--reference", action="store_true", help="the int8 graph in float arithmetic")
    a = ap.parse_args()
    b = verify(a.bundle)
    x = np.stack([preprocess_grey(load_grey(f), b.preprocess) for f in a.images]) if a.images else None
    feed = np.load(a.inputs)["x"] if a.inputs else x
    opts = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.option)}
    meta = {"machine": platform.machine(), "python": sys.version.split()[0], "numpy": np.__version__, "options": opts}
    if a.reference:
        logits, info = float_reference(b, feed)
    else:
        be = open_backend(b, a.threads, opts)
        logits = np.concatenate([be.infer(feed[i:i + 1]) for i in range(len(feed))])
        info = be.info().to_dict()
    meta["info"] = info
    np.savez(a.out, x=x if x is not None else np.zeros(0, np.float32), logits=logits, meta=json.dumps(meta))


if __name__ == "__main__":
    main()
