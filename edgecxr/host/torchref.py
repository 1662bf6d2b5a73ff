"""PyTorch fp32 reference "backend" (host only: it imports torch).

Runs an edgecxr checkpoint, or an untrained heavy baseline (DenseNet-121, the
CheXNet architecture) for latency comparisons.
"""

from __future__ import annotations

import numpy as np

from edgecxr.device.backends.base import Backend, BackendInfo


class TorchBackend(Backend):
    name = "torch"

    def load(self) -> None:
        import torch

        self._torch = torch
        if self.threads:
            torch.set_num_threads(int(self.threads))
        arch = self.options.get("baseline")
        if arch:
            self.model = build_baseline(arch)
        else:
            from edgecxr.host.model import load_checkpoint

            self.model, meta = load_checkpoint(self.model_path)
            self.identity = torch_identity(meta["sha256"], torch.get_num_threads())
        self.model.eval()

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(x)).float().numpy()

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, "torch", self._torch.__version__, self._torch.get_num_threads(),
                           "CPU (eager)", "float32", self.notes)


def torch_identity(checkpoint_sha256: str, threads: int) -> tuple:
    """What decides a checkpoint's PyTorch logits (``infer_all``'s memo key): the export's float
    reference and the ``pytorch-fp32`` bench subject share them inside one run."""
    return (checkpoint_sha256, "torch", "{}", int(threads))


def build_baseline(arch: str):
    import torchvision

    if arch == "densenet121":
        return torchvision.models.densenet121(num_classes=2)
    if arch == "resnet50":
        return torchvision.models.resnet50(num_classes=2)
    if arch == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(num_classes=2)
    from edgecxr.shared.errors import EdgeCXRError

    raise EdgeCXRError(f"unknown baseline {arch!r} (densenet121, resnet50, mobilenet_v2)")


def subject_from_checkpoint(path):
    """Bench subject for the PyTorch fp32 model itself (host only)."""
    from pathlib import Path

    from edgecxr.device.backends.base import Subject
    from edgecxr.device.bundle import IOSpec
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig

    blob = read_checkpoint(path)
    pp = PreprocessConfig.from_dict(blob["preprocess"])
    spec_in = IOSpec("input", [1, pp.channels, pp.size, pp.size], "NCHW", "float32")
    spec_out = IOSpec("logits", [1, 2], "NC", "float32")

    def open_(threads, opts):
        b = TorchBackend(path, spec_in, spec_out, threads=threads, options=opts)
        b.load()
        return b

    from edgecxr.shared.fsutil import sha256_file

    return Subject(name="pytorch-fp32", target="host", backend="torch", precision="fp32", preprocess=pp,
                   threshold=blob.get("threshold"), model_bytes=Path(path).stat().st_size, reference={},
                   open=open_, meta={"checkpoint": str(path), "checkpoint_sha256": sha256_file(path)})


def subject_baseline(arch: str, size: int = 224):
    """Untrained heavy baseline for latency and size only (the CheXNet architecture by default)."""
    import io

    import torch

    from edgecxr.device.backends.base import Subject
    from edgecxr.device.bundle import IOSpec
    from edgecxr.shared.preprocess import PreprocessConfig

    pp = PreprocessConfig(size=size)
    m = build_baseline(arch)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    spec_in = IOSpec("input", [1, 3, size, size], "NCHW", "float32")
    spec_out = IOSpec("logits", [1, 2], "NC", "float32")

    def open_(threads, opts):
        b = TorchBackend("-", spec_in, spec_out, threads=threads, options={**opts, "baseline": arch})
        b.load()
        return b

    return Subject(name=f"baseline-{arch}", target="host", backend="torch", precision="fp32", preprocess=pp,
                   threshold=None, model_bytes=len(buf.getvalue()), reference={}, open=open_,
                   meta={"note": f"untrained {arch} (timing and size only)",
                         "params": sum(p.numel() for p in m.parameters())})
