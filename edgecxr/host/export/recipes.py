"""Named int8 quantization recipes per backend: the one place that says how each runtime quantizes.

A recipe is chosen by name (``edgecxr export --quant NAME``, or the target profile's
``quant`` key); the default per backend is the winner measured in
``benchmarks/quantization.md`` (agreement and AUC drop against fp32 on validation plus the
shift stress set, on AVX2-only x86). Every recipe's name and parameters go into the
bundle's manifest (``conversion.recipe``).

Why the defaults differ from the libraries' own defaults:

- **x86 without VNNI saturates.** AVX2 int8 kernels (oneDNN in OpenVINO, MLAS in ONNX
  Runtime) multiply unsigned 8-bit activations by signed 8-bit weights and add pairs in
  16 bits (``vpmaddubsw``): 2 x 255 x 127 overflows int16. Weights limited to 7 bits
  (2 x 255 x 63 < 32767) cannot overflow. NNCF calls this ``overflow_fix`` (its default
  applies it to the first layer only); ONNX Runtime calls it ``reduce_range``. The cost
  is one bit of weight precision on every CPU; the gain is the same numbers on AVX2,
  AVX-512 VNNI, AMX and arm64.
- **Activations leave the calibrated range on unseen images.** NNCF's default range
  estimator for activations averages per-sample extremes, which clips the tails the
  calibration set shows only rarely; on shifted images those tails are common.
  Full bias correction with the calibrated min/max or NNCF's histogram (MSE) ranges holds
  better; histogram-bc (OpenVINO) had the best worst-case agreement over both models on
  validation plus the stress set.  For ONNX Runtime, minmax-rr, percentile-rr and entropy-rr
  were within one image of each other on the first models; with the retrained models and their
  sensitivity-0.95 threshold (p about 0.86, where many pneumonia scores lie) percentile-rr lost
  7 of 300 gamma- and noise-shifted images against the fp32 twin of the pruned model, minmax-rr
  5 at most (benchmarks/quantization.md). Even minmax-rr missed 0.99 agreement on gamma- and
  noise-shifted images (0.983) of the pruned model.
- **The stem and the biases carry most of the ONNX error.** Excluding one node at a time showed
  the first convolution and the first depthwise convolution (full resolution, few channels, the
  raw X-ray's dynamic range) as the most sensitive layers; 8-bit rounding also shifts each
  channel's mean output, which the following layers amplify. ``minmax-rr-fs4-bc`` leaves the first
  four convolutions float (``nodes_to_exclude``: TensorRT runs them in fp16, the file stays in
  its explicit-quantization QDQ form) and corrects each int32 bias, layer by layer, so the int8
  graph's channel means match fp32 on 64 calibration images (``qdq_bias.py``). On selection sets
  that share no image with CI's stress set, that halved the mean |logit margin| error against fp32
  (pruned model 0.318 -> 0.149); with percentile ranges on top (``percentile-rr-fs4-bc``) it fell
  further on both models and two seeds (0.138, 0.117, 0.136 against 0.149, 0.135, 0.154), so that
  is the default (benchmarks/quantization.md, ``benchmarks/quantization/ort_ablation.py``).
- **LiteRT read higher than fp32 because of a converter bug, not the calibration.** The eval-mode
  Dropout before the classifier got a PT2E observer of its own; litert-torch drops the no-op and its
  requantization but stored the classifier's int32 bias at the dropout's scale, 7.3x too large.
  The converter now removes Dropout before PT2E (``litert._without_dropout``). With that, bias
  correction on the PT2E graph (``pt2e_bias.py``) transfers to the file: ``pt2e-histogram-bc`` had
  the smallest mean |logit margin| error against fp32 on both models and two selection seeds
  (reference 0.187 / 0.180, pruned 0.212 / 0.216; pt2e-histogram 0.226 / 0.207, 0.228 / 0.234;
  before the Dropout fix 0.413 / 0.389, 0.251 / 0.266), so it is the LiteRT default
  (``benchmarks/quantization/litert_ablation.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecxr.shared.errors import EdgeCXRError


@dataclass(frozen=True)
class Recipe:
    name: str
    backend: str
    description: str
    params: dict[str, Any] = field(default_factory=dict)
    saturation_safe: bool = True  # 7-bit weights (or a kernel that accumulates in 32 bits everywhere)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "description": self.description,
                "params": dict(self.params), "saturation_safe": self.saturation_safe}


_RECIPES: list[Recipe] = [
    # OpenVINO (NNCF post-training quantization)
    Recipe("minmax-bc", "openvino",
           "NNCF PTQ, preset PERFORMANCE (symmetric int8), 7-bit weights on every layer (overflow fix), "
           "activation ranges = calibrated min/max, full bias correction",
           {"preset": "performance", "overflow_fix": "enable", "activations_range": "minmax",
            "fast_bias_correction": False}),
    Recipe("histogram-bc", "openvino",
           "as minmax-bc, activation ranges from NNCF's histogram (MSE) estimator",
           {"preset": "performance", "overflow_fix": "enable", "activations_range": "histogram",
            "fast_bias_correction": False}),
    Recipe("nncf-ofix", "openvino",
           "NNCF defaults (mean of per-sample ranges, fast bias correction) with 7-bit weights everywhere",
           {"preset": "performance", "overflow_fix": "enable", "activations_range": None,
            "fast_bias_correction": True}),
    Recipe("nncf-default", "openvino",
           "NNCF defaults: 8-bit weights except the first layer; SATURATES on x86 without VNNI",
           {"preset": "performance", "overflow_fix": "first_layer", "activations_range": None,
            "fast_bias_correction": True}, saturation_safe=False),
    # ONNX Runtime static QDQ (TensorRT explicit quantization: symmetric, zero point 0)
    Recipe("minmax-rr", "onnxruntime",
           "ORT static QDQ, symmetric int8 activations and per-channel weights (zero point 0, TensorRT-ready), "
           "7-bit weights (reduce_range), MinMax calibration",
           {"calibrate_method": "minmax", "reduce_range": True}),
    Recipe("minmax-rr-fs4-bc", "onnxruntime",
           "as minmax-rr, with the first four convolutions (the full-resolution stem) left in float and the "
           "int32 biases corrected layer by layer on 64 calibration images (TensorRT runs the stem in fp16)",
           {"calibrate_method": "minmax", "reduce_range": True, "float_stem": 4, "bias_correction": 64}),
    Recipe("percentile-rr-fs4-bc", "onnxruntime",
           "as minmax-rr-fs4-bc, activation ranges at the 99.999th percentile of the calibration histogram",
           {"calibrate_method": "percentile", "reduce_range": True, "percentile": 99.999, "float_stem": 4,
            "bias_correction": 64}),
    Recipe("minmax-rr-fs2", "onnxruntime",
           "as minmax-rr, with the first two convolutions (stem and first depthwise) left in float",
           {"calibrate_method": "minmax", "reduce_range": True, "float_stem": 2}),
    Recipe("minmax-rr-bc", "onnxruntime",
           "as minmax-rr, int32 biases corrected layer by layer on 64 calibration images",
           {"calibrate_method": "minmax", "reduce_range": True, "bias_correction": 64}),
    Recipe("minmax-rr-fpfc", "onnxruntime",
           "as minmax-rr, with the classifier (last Gemm) and the logits left in float (TensorRT runs it in fp16/fp32)",
           {"calibrate_method": "minmax", "reduce_range": True, "float_classifier": True}),
    Recipe("percentile-rr", "onnxruntime",
           "as minmax-rr, activation ranges at the 99.999th percentile of the calibration histogram",
           {"calibrate_method": "percentile", "reduce_range": True, "percentile": 99.999}),
    Recipe("percentile-rr-fpfc", "onnxruntime",
           "as percentile-rr, with the classifier (last Gemm) and the logits left in float: int8 logits "
           "put p on a coarse grid near a high threshold (TensorRT runs the layer in fp16/fp32)",
           {"calibrate_method": "percentile", "reduce_range": True, "percentile": 99.999, "float_classifier": True}),
    Recipe("entropy-rr", "onnxruntime",
           "as minmax-rr, activation ranges by KL divergence (TensorRT's classic entropy calibration)",
           {"calibrate_method": "entropy", "reduce_range": True}),
    # ONNX Runtime on a CPU (targets/arm64-ort.toml, x86-ort.toml; benchmarks/ort-int8-cpu.md): asymmetric uint8
    # activations x 7-bit int8 weights, the u8 x s8 form MLAS's integer kernels take (the symmetric int8
    # activations above fall back to float kernels on a CPU and run slower than fp32). QDQ: ONNX Runtime fuses
    # it into the same integer kernels as a QOperator file at load, and the biases stay correctable.
    Recipe("u8-percentile-rr-fs2-bc", "onnxruntime",
           "ORT static QDQ for CPUs: asymmetric uint8 activations (99.999th percentile ranges), per-channel "
           "7-bit int8 weights (reduce_range), the first two convolutions (stem and first depthwise) in float, "
           "int32 biases corrected layer by layer on 64 calibration images",
           {"activations": "u8", "calibrate_method": "percentile", "percentile": 99.999, "reduce_range": True,
            "float_stem": 2, "bias_correction": 64}),
    Recipe("u8-percentile-rr-fs1-bc", "onnxruntime",
           "as u8-percentile-rr-fs2-bc, with only the first convolution in float",
           {"activations": "u8", "calibrate_method": "percentile", "percentile": 99.999, "reduce_range": True,
            "float_stem": 1, "bias_correction": 64}),
    Recipe("u8-percentile-rr-bc", "onnxruntime",
           "as u8-percentile-rr-fs2-bc, every convolution int8",
           {"activations": "u8", "calibrate_method": "percentile", "percentile": 99.999, "reduce_range": True,
            "bias_correction": 64}),
    Recipe("u8-minmax-rr-bc", "onnxruntime",
           "as u8-percentile-rr-bc, activation ranges = calibrated min/max",
           {"activations": "u8", "calibrate_method": "minmax", "reduce_range": True, "bias_correction": 64}),
    Recipe("u8-minmax", "onnxruntime",
           "ORT static QDQ, asymmetric uint8 activations with 8-bit weights, MinMax calibration; SATURATES on "
           "x86 without VNNI (kept to show what the 7-bit weights of the u8 recipes buy)",
           {"activations": "u8", "calibrate_method": "minmax", "reduce_range": False}, saturation_safe=False),
    Recipe("minmax", "onnxruntime",
           "ORT static QDQ with 8-bit weights, MinMax calibration; SATURATES on x86 without VNNI",
           {"calibrate_method": "minmax", "reduce_range": False}, saturation_safe=False),
    # LiteRT (litert-torch PT2E); XNNPACK accumulates int8 in 32 bits on every CPU
    Recipe("pt2e-histogram", "litert",
           "litert-torch PT2E: per-channel symmetric int8 weights, per-tensor int8 activations "
           "(histogram observer), int8 input/output, every residual add int8",
           {"observer": "histogram"}),
    Recipe("pt2e-minmax", "litert",
           "as pt2e-histogram, activation ranges from the calibrated min/max",
           {"observer": "minmax"}),
    Recipe("pt2e-histogram-bc", "litert",
           "as pt2e-histogram, float biases corrected layer by layer on 64 calibration images before conversion",
           {"observer": "histogram", "bias_correction": 64}),
    Recipe("pt2e-minmax-bc", "litert",
           "as pt2e-minmax, float biases corrected layer by layer on 64 calibration images before conversion",
           {"observer": "minmax", "bias_correction": 64}),
]

RECIPES: dict[tuple[str, str], Recipe] = {(r.backend, r.name): r for r in _RECIPES}
DEFAULTS = {"openvino": "histogram-bc", "onnxruntime": "percentile-rr-fs4-bc", "litert": "pt2e-histogram-bc"}


def names(backend: str) -> list[str]:
    return [r.name for r in _RECIPES if r.backend == backend]


def help_text() -> str:
    """Every backend's recipes, the default first (for ``--quant``'s help)."""
    parts = []
    for backend in dict.fromkeys(r.backend for r in _RECIPES):
        ns = names(backend)
        d = DEFAULTS.get(backend)
        parts.append(f"{backend} " + "|".join(([d] if d in ns else []) + [n for n in ns if n != d]))
    return ", ".join(parts)


def get_recipe(backend: str, name: str | None = None) -> Recipe:
    name = name or DEFAULTS.get(backend)
    r = RECIPES.get((backend, name or ""))
    if r is None:
        raise EdgeCXRError(f"unknown int8 recipe {name!r} for {backend}; known: {', '.join(names(backend))}")
    return r


def resolve(spec: str | None, backend: str, profile_default: str | None = None) -> Recipe:
    """``spec``: a recipe name, or per backend ``openvino=histogram-bc,onnxruntime=entropy-rr``."""
    name = None
    if spec and "=" in spec:
        pairs = {}
        for part in spec.split(","):
            k, sep, v = part.partition("=")
            if not sep or not k.strip() or not v.strip():
                raise EdgeCXRError(f"bad --quant {spec!r}: use NAME or BACKEND=NAME,BACKEND=NAME")
            pairs[k.strip()] = v.strip()
        name = pairs.get(backend)
    elif spec:
        name = spec
    return get_recipe(backend, name or profile_default or None)
