"""Where the model looks, on the host: Grad-CAM on a PyTorch checkpoint (host side: imports torch).

Grad-CAM (Selvaraju et al. 2017) comes from the ``grad-cam`` package (pytorch-grad-cam), the
maintained implementation, on MobileNetV2's last convolutional block (``features[-1]``, the
1x1 conv to 1280 channels, 7 x 7 at 224 px). The target is the log-odds of the label the checkpoint
calls at its own threshold (logit[called] - logit[other]), the same quantity the board's occlusion
maps measure, so host and board pictures mean the same thing. ``--method occlusion`` runs the
board's method on the PyTorch model instead (for comparing the two methods on one model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.device.explain import (
    Heat,
    Model,
    Occluder,
    OcclusionConfig,
    check_out,
    expand_images,
    explain_to_folder,
    log_odds,
)
from edgecxr.shared.errors import EdgeCXRError


class _CalledLogOdds:
    """Grad-CAM target: logit[called] - logit[other] for one image's output vector."""

    def __init__(self, sign: float):
        self.sign = sign

    def __call__(self, output):
        return self.sign * (output[..., 1] - output[..., 0])


class GradCAMMethod:
    name = "gradcam"

    def __init__(self, torch_model, threshold: float):
        from pytorch_grad_cam import GradCAM

        self.model = torch_model
        self.threshold = threshold
        self.cam = GradCAM(model=torch_model, target_layers=[torch_model.features[-1]])

    def explain(self, x: np.ndarray) -> Heat:
        import torch

        t0 = time.perf_counter()
        xt = torch.from_numpy(np.ascontiguousarray(x[None], np.float32))
        with torch.inference_mode():
            score = float(log_odds(self.model(xt).float().numpy())[0])
        pos = 1.0 / (1.0 + np.exp(-score)) >= self.threshold
        sign = 1.0 if pos else -1.0
        cam = self.cam(input_tensor=xt, targets=[_CalledLogOdds(sign)])[0]
        return Heat((sign * np.asarray(cam, np.float32)), score, None, None, None, time.perf_counter() - t0, "gradcam")


def open_checkpoint_model(checkpoint: str | Path, threads: int | None = None) -> tuple[Model, Any]:
    import torch

    from edgecxr.host.model import load_checkpoint
    from edgecxr.host.torchref import subject_from_checkpoint

    if threads:
        torch.set_num_threads(int(threads))
    net, meta = load_checkpoint(checkpoint)
    thr = meta.get("threshold")
    if thr is None:
        raise EdgeCXRError("checkpoint has no operating threshold (evaluate --save writes one)", checkpoint)
    subj = subject_from_checkpoint(checkpoint)
    backend = subj.open(threads, {})
    from edgecxr.shared.preprocess import PreprocessConfig

    pp = PreprocessConfig.from_dict(meta["preprocess"])
    m = Model(Path(checkpoint).stem, pp, float(thr), list(meta.get("labels") or ["NORMAL", "PNEUMONIA"]),
              backend.infer, "torch", "fp32")
    return m, net


def run_host_explain(checkpoint: str | Path, images: Sequence[str | Path], out: str | Path, method: str = "gradcam",
                     cfg: OcclusionConfig | None = None, threads: int | None = None, force: bool = False,
                     max_images: int = 0, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`edgecxr explain CHECKPOINT ...`: Grad-CAM (default) or occlusion on the PyTorch model."""
    if method not in ("gradcam", "occlusion"):
        raise EdgeCXRError(f"--method {method!r}: known for a checkpoint: gradcam, occlusion")
    out = check_out(out, force)
    files = expand_images(images, max_images)
    if not files:
        raise EdgeCXRError("no images given (files, or folders holding .jpeg/.png/.dcm)")
    model, net = open_checkpoint_model(checkpoint, threads)
    if method == "gradcam":
        m: Any = GradCAMMethod(net, model.threshold)
        cfg = None
        title = f"edgecxr explain: {model.name} (PyTorch fp32), Grad-CAM on features[-1]"
    else:
        cfg = cfg or OcclusionConfig()
        m = Occluder(model.infer, model.pp, cfg)
        m.warm_up()
        title = f"edgecxr explain: {model.name} (PyTorch fp32), occlusion"
    return explain_to_folder(model, m, files, Path(out), title, cfg=cfg, log=log)
