"""PyTorch -> OpenVINO IR; int8 with NNCF post-training quantisation (recipe: see recipes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgecxr.device.bundle import IOSpec
from edgecxr.host.export.base import Converted
from edgecxr.host.export.recipes import Recipe, get_recipe


def convert(model: torch.nn.Module, size: int, channels: int, calib: list[np.ndarray] | None,
            precision: str, out_dir: Path, recipe: Recipe | None = None) -> Converted:
    import openvino as ov

    example = torch.zeros(1, channels, size, size)
    ovm = ov.convert_model(model.eval(), example_input=example, input=[(-1, channels, size, size)])
    ovm.inputs[0].get_tensor().set_names({"input"})
    ovm.outputs[0].get_tensor().set_names({"logits"})
    details: dict = {}
    versions = {"openvino": ov.__version__}
    if precision == "int8":
        import logging

        import nncf

        logging.getLogger("nncf").setLevel(logging.ERROR)
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        recipe = recipe or get_recipe("openvino")
        rp = recipe.params
        adv: dict = {"overflow_fix": {"enable": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER,
                                      "disable": OverflowFix.DISABLE}[rp.get("overflow_fix", "enable")]}
        if rp.get("activations_range"):
            adv["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet,
                                                                rp["activations_range"].upper())
        data = nncf.Dataset([x[None].astype(np.float32) for x in calib or []])
        preset = {"performance": nncf.QuantizationPreset.PERFORMANCE,
                  "mixed": nncf.QuantizationPreset.MIXED}[rp.get("preset", "performance")]
        ovm = nncf.quantize(ovm, data, subset_size=len(calib or []), preset=preset,
                            fast_bias_correction=bool(rp.get("fast_bias_correction", True)),
                            advanced_parameters=AdvancedQuantizationParameters(**adv))
        details["quantization"] = f"{recipe.name}: {recipe.description}"
        details["recipe"] = recipe.to_dict()
        details["calibration_images"] = len(calib or [])
        versions["nncf"] = nncf.__version__
    ov.save_model(ovm, str(out_dir / "model.xml"), compress_to_fp16=False)
    ops: dict[str, int] = {}
    for op in ovm.get_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    details["ops"] = ops
    return Converted("model.xml", ["model.xml", "model.bin"],
                     IOSpec(ovm.inputs[0].get_any_name(), [1, channels, size, size], "NCHW", "float32"),
                     IOSpec(ovm.outputs[0].get_any_name(), [1, 2], "NC", "float32"), versions, details)
