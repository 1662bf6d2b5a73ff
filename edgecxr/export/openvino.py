"""PyTorch -> OpenVINO IR; int8 with NNCF post-training quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..bundle import IOSpec
from .base import Converted


def convert(model: torch.nn.Module, size: int, channels: int, calib: list[np.ndarray] | None,
            precision: str, out_dir: Path) -> Converted:
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
        data = nncf.Dataset([x[None].astype(np.float32) for x in calib or []])
        ovm = nncf.quantize(ovm, data, subset_size=len(calib or []), preset=nncf.QuantizationPreset.PERFORMANCE)
        details["quantization"] = ("NNCF post-training quantisation, preset PERFORMANCE (symmetric int8 "
                                   "weights per channel and activations)")
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
