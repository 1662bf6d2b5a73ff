"""The runner contract: a backend the runner has never heard of needs nothing in the runner.

The backend below is written here, not in edgecxr: it runs the real tiny model (tests/data/tiny64.pt,
exported to ONNX in the test) through the real ONNX Runtime on real validation X-rays.  ``bench.run``
gives it the same images, timing, memory and accuracy treatment as a shipped backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecxr.device.backends.base import Backend, BackendInfo, Subject
from edgecxr.device.bench import BenchConfig, load_images, run
from edgecxr.device.bundle import IOSpec
from edgecxr.shared.preprocess import PreprocessConfig

from .conftest import ROOT, TINY

VAL = ROOT / "data" / "kermany224-val"


class PlainOrt(Backend):
    """A new runtime in a dozen lines: ONNX Runtime on the CPU, no options, nothing else."""

    name = "plain-ort"

    def load(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_spec.name: x})[0]

    def info(self) -> BackendInfo:
        import onnxruntime as ort

        return BackendInfo(self.name, "onnxruntime", ort.__version__, self.threads, "CPUExecutionProvider", "fp32")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[Path, PreprocessConfig, object]:
    torch = pytest.importorskip("torch")
    from edgecxr.host.model import load_checkpoint

    model, meta = load_checkpoint(TINY)
    model.eval()
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    path = tmp_path_factory.mktemp("contract") / "tiny.onnx"
    torch.onnx.export(model, torch.zeros(1, pp.channels, pp.size, pp.size), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    return path, pp, (model, meta)


def test_a_backend_written_outside_edgecxr_is_benched_by_the_runner(tiny_onnx):
    pytest.importorskip("onnxruntime")
    import torch

    path, pp, (model, meta) = tiny_onnx
    spec_in = IOSpec("input", [1, pp.channels, pp.size, pp.size], "NCHW", "float32")
    spec_out = IOSpec("logits", [1, 2], "NC", "float32")
    opened: list[PlainOrt] = []

    def open_(threads, opts):
        b = PlainOrt(path, spec_in, spec_out, threads, opts)
        b.load()
        opened.append(b)
        return b

    subject = Subject(name="plain-ort-fp32", target="contract", backend="plain-ort", precision="fp32",
                      preprocess=pp, threshold=float(meta["threshold"]), model_bytes=path.stat().st_size,
                      reference={}, open=open_, meta={})
    cfg = BenchConfig(warmup=2, iterations=5, threads=1, max_images=12)
    rec = run(subject, VAL, cfg, log=lambda *_: None)

    assert len(opened) == 1 and opened[0].threads == 1
    assert rec["kind"] == "edgecxr-bench" and rec["subject"]["backend"] == "plain-ort"
    assert rec["runtime"]["runtime"] == "onnxruntime" and rec["runtime"]["threads"] == 1
    lat = rec["latency_ms"]
    assert lat["n"] == 5 and lat["batch"] == 1 and 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert rec["cold_start_ms"]["total"] > 0 and rec["memory_mb"]["rss_after"] > 0
    assert rec["data"]["n"] == 12 and rec["data"]["order"] == "sorted by relative path"
    acc = rec["accuracy"]
    assert acc["n"] == 12 and acc["n_pos"] > 0 and acc["n_neg"] > 0 and acc["threshold"] == subject.threshold

    # the runner scored what the real model says about these images: same probabilities as PyTorch
    imgs = load_images(subject, VAL, 12, lambda *_: None)
    with torch.no_grad():
        logits = model(torch.from_numpy(imgs["x"])).numpy()
    p_torch = 1 / (1 + np.exp(logits[:, 0] - logits[:, 1]))
    y = np.array([it.label for it in imgs["items"]])
    called = p_torch >= subject.threshold
    assert acc["tp"] == int((called & (y == 1)).sum()) and acc["tn"] == int((~called & (y == 0)).sum())
    assert np.allclose(opened[0].infer(imgs["x"]), logits, atol=1e-4)
