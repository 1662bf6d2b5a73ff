"""Empirical bias correction for a PT2E-quantized PyTorch graph before LiteRT conversion (Nagel
et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019,
section 4.2), the LiteRT twin of ``qdq_bias.py``.

After ``convert_pt2e(fold_quantize=False)`` every convolution and the classifier read
``dequantize(quantize(x))`` activations and ``dequantize(quantize_per_channel(w))`` weights, with a
float bias that litert-torch's converter later stores as int32 (scale = input scale x weight
scale). Int8 rounding shifts the mean of every layer's output and the shift adds up through the
network. (The large upward shift LiteRT int8 showed against fp32, issue 26, was another thing: the
classifier's bias stored at the wrong scale, see ``litert._without_dropout``. With that fixed the
file follows this graph, so a correction made here reaches the file.) The correction: for each
convolution or linear layer in graph order, the mean per
output channel of the quantized graph (in float arithmetic on the int8 grid, as PT2E simulates it)
is compared with the float graph's on the same images, and the layer's bias absorbs the
difference, after the layers before it were corrected.

The float graph is the same graph with every quantize/dequantize node passed through, so the two
match node for node (batch norm is already folded into the convolutions by ``prepare_pt2e``).
Correction is sequential in one pass: the exported graph is specialised to batch 1, so one
interpreter per image runs it node by node, all in lockstep; at each corrected layer every image's
output is shifted by the difference (which is what a new bias gives) before any later node reads it. So the result equals re-running the whole graph once per layer,
for the cost of one float and one quantized pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

_LAYERS = ("aten.conv2d.default", "aten.linear.default")


def _bias_node(node: torch.fx.Node) -> torch.fx.Node | None:
    if node.op != "call_function" or str(node.target) not in _LAYERS or len(node.args) < 3:
        return None
    b = node.args[2]
    return b if isinstance(b, torch.fx.Node) and b.op == "get_attr" else None


def _channel_mean(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per output channel: mean over images and space (NCHW conv outputs) or over images (NC)."""
    t = torch.cat([o.double() for o in outs])
    return t.mean(dim=(0, 2, 3)) if t.dim() == 4 else t.mean(dim=0)


class _Float(torch.fx.Interpreter):
    """The graph in float: every quantize/dequantize returns its input."""

    def call_function(self, target, args, kwargs):
        if str(target).startswith("quantized_decomposed."):
            return args[0]
        return super().call_function(target, args, kwargs)


def _lockstep(its: Sequence[torch.fx.Interpreter], xs: Sequence[torch.Tensor], at_layer) -> None:
    """Run one interpreter per image (the exported graph is specialised to batch 1) node by node
    together, so ``at_layer(node, outputs)`` sees every image's output of a layer before any later
    node runs, and may replace them."""
    for it, x in zip(its, xs, strict=True):
        it.args_iter = iter([x])
    for n in its[0].graph.nodes:
        if n.op == "output":
            break
        outs = [it.run_node(n) for it in its]
        if _bias_node(n) is not None:
            outs = at_layer(n, outs) or outs
        for it, o in zip(its, outs, strict=True):
            it.env[n] = o
            for dead in it.user_to_last_uses.get(n, []):
                del it.env[dead]


def correct_biases(gm: torch.fx.GraphModule, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """Correct ``gm``'s (a converted PT2E graph, NHWC input, batch 1) layer biases in place on
    ``images`` (CHW float arrays). Returns what the manifest records."""
    xs = [torch.from_numpy(np.ascontiguousarray(np.transpose(im[None].astype(np.float32), (0, 2, 3, 1))))
          for im in images]
    means: dict[str, torch.Tensor] = {}
    shifts: list[float] = []

    def record(n, outs):
        means[n.name] = _channel_mean(outs)

    def shift(n, outs):
        delta = (means[n.name] - _channel_mean(outs)).float()
        b = _bias_node(n)
        holder, _, attr = b.target.rpartition(".")
        bias = getattr(gm.get_submodule(holder) if holder else gm, attr)
        bias.add_(delta.to(bias.dtype))
        shifts.append(float(delta.abs().mean()))
        view = delta.view((1, -1, 1, 1) if outs[0].dim() == 4 else (1, -1))
        return [o + view.to(o.dtype) for o in outs]

    with torch.no_grad():
        _lockstep([_Float(gm) for _ in xs], xs, record)
        _lockstep([torch.fx.Interpreter(gm) for _ in xs], xs, shift)
    gm.recompile()
    return {"images": len(images), "layers": len(shifts),
            "mean_abs_shift": float(np.mean(shifts)) if shifts else 0.0,
            "max_layer_mean_abs_shift": float(np.max(shifts)) if shifts else 0.0}

