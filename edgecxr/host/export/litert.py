"""PyTorch -> LiteRT (.tflite) with litert-torch, no TensorFlow.

fp32: NHWC float input.  int8: PT2E post-training quantisation with
litert-torch's quantizer (per-channel symmetric int8 weights, int8
activations calibrated on the calibration set), int8 input and output.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from edgecxr.device.bundle import IOSpec
from edgecxr.host.export.base import Converted, spread
from edgecxr.host.export.recipes import Recipe, get_recipe


@contextlib.contextmanager
def _quiet():
    """Fewer absl/TF log lines (export sends what remains to the converter log, see base.converter_output)."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    old = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = old


_ADD_OPS = ("aten.add.Tensor", "aten.add_.Tensor")


def _int8_quantizer(observer: str = "histogram"):
    """litert-torch's PT2E quantizer, plus an annotation for every residual add.

    litert-torch (0.10) annotates an add through its source partition and marks only the
    partition's first output node, so in MobileNetV2, where one block's residual sum feeds the
    next block's add, every chained add is left unannotated: the converter then keeps those
    adds in float behind DEQUANTIZE/QUANTIZE pairs (9 of 10 in our model). That is not a
    full-integer model: int8-only accelerators reject it, and older runtimes (tflite-runtime
    2.14) run it far slower. Annotating the remaining adds like the first makes every add int8.
    """
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.pt2e_quantizer_utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class Quantizer(pt2e_quantizer.PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            cfg = self.global_config
            for n in model.graph.nodes:
                if n.op != "call_function" or str(n.target) not in _ADD_OPS:
                    continue
                ann = n.meta.get("quantization_annotation")
                if ann is not None and ann._annotated:
                    continue
                args = [a for a in n.args[:2] if isinstance(a, torch.fx.Node)]
                if len(args) != 2:
                    continue
                n.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: get_input_act_qspec(cfg) for a in args},
                    output_qspec=get_output_act_qspec(cfg), _annotated=True)
            return model

    cfg = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    if observer == "minmax":
        import dataclasses

        from torchao.quantization.pt2e.observer import MinMaxObserver

        act = dataclasses.replace(cfg.input_activation,
                                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
    elif observer != "histogram":
        raise ValueError(f"unknown activation observer {observer!r}")
    return Quantizer().set_global(cfg)


def _bias_correction(converted, calib: list[np.ndarray] | None, recipe: Recipe) -> dict | None:
    """Layer-by-layer bias correction (``pt2e_bias.py``) on ``bias_correction`` calibration images
    spread evenly over the set, as the ONNX converter picks them."""
    n = int(recipe.params.get("bias_correction") or 0)
    if not n or not calib:
        return None
    from edgecxr.host.export.pt2e_bias import correct_biases

    return correct_biases(converted, spread(calib, n))


def _without_dropout(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """A copy of the (eval-mode) model with each Dropout replaced by Identity, and how many.

    In eval mode dropout is the identity, but PT2E gives its output an observer of its own: in
    MobileNetV2 the classifier's input is then requantized from the pooled features' scale (0.057)
    to the dropout output's (0.0078). litert-torch's converter drops the no-op and that requantize
    with it, yet still stores the FULLY_CONNECTED bias in int32 at the dropout scale x weight scale:
    the file read the pooled features 7x coarser than calibrated and applied the classifier's bias
    7.3x too large, which is the near-constant upward shift of LiteRT int8 against fp32 (issue 26:
    every held-out flip went up). Without the dropout node the file matches its PT2E simulation.
    """
    import copy

    model = copy.deepcopy(model)
    n = 0
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.Dropout):
                setattr(mod, name, torch.nn.Identity())
                n += 1
    return model, n


def convert(model: torch.nn.Module, size: int, channels: int, calib: list[np.ndarray] | None,
            precision: str, out_dir: Path, recipe: Recipe | None = None) -> Converted:
    import litert_torch

    model = model.eval()
    nchw = (torch.zeros(1, channels, size, size),)
    sample = (torch.zeros(1, size, size, channels),)
    with _quiet():
        if precision == "fp32":
            edge = litert_torch.convert(litert_torch.to_channel_last_io(model, args=[0]).eval(), sample)
            details = {"quantization": None}
        else:
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e import quantize_pt2e

            recipe = recipe or get_recipe("litert")
            quantizer = _int8_quantizer(recipe.params.get("observer", "histogram"))
            plain, n_dropout = _without_dropout(model)
            exported = torch.export.export(litert_torch.to_channel_last_io(plain, args=[0]).eval(), sample).module()
            prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
            with torch.no_grad():
                for x in calib or []:
                    prepared(torch.from_numpy(np.ascontiguousarray(np.transpose(x[None], (0, 2, 3, 1)))))
            converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
            bc = _bias_correction(converted, calib, recipe)
            edge = litert_torch.convert(converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
            details = {"quantization": f"{recipe.name}: {recipe.description}", "recipe": recipe.to_dict(),
                       "calibration_images": len(calib or []), "dropout_removed": n_dropout}
            if bc is not None:
                details["bias_correction"] = bc
        edge.export(str(out_dir / "model.tflite"))
    del nchw
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(out_dir / "model.tflite"))
    i, o = it.get_input_details()[0], it.get_output_details()[0]

    def spec(d, layout):
        dt = np.dtype(d["dtype"]).name
        scale, zp = d["quantization"]
        q = dt in ("int8", "uint8")
        return IOSpec(d["name"], [int(v) for v in d["shape"]], layout, dt,
                      float(scale) if q else None, int(zp) if q else None)

    ops: dict[str, int] = {}
    for op in it._get_ops_details():
        ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    details["ops"] = ops
    import ai_edge_litert

    return Converted("model.tflite", ["model.tflite"], spec(i, "NHWC"), spec(o, "NC"),
                     {"litert-torch": litert_torch.__version__,
                      "ai-edge-litert": getattr(ai_edge_litert, "__version__", "unknown")}, details)
