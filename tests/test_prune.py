"""Channel pruning of the real tiny model (torch-pruning): the result is smaller, self-describing,
trains further, and exports to all three runtimes in int8; bad input is refused before anything
is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecxr.host.model import load_checkpoint, save_checkpoint
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.preprocess import PreprocessConfig

from .conftest import CALIB, MINI, TARGETS, TINY, run_cli


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prune")


@pytest.fixture(scope="module")
def split(work) -> Path:
    path = work / "split.json"
    p = run_cli("data", "split", MINI, "--out", path)
    assert p.returncode == 0, p.stderr
    return path


@pytest.fixture(scope="module")
def pruned(work, split):
    """TINY pruned at 0.5 in one step, magnitude importance, 1 fine-tune epoch on the MINI split."""
    from edgecxr.host.prune import prune_checkpoint

    logs: list[str] = []
    rec = prune_checkpoint(TINY, work / "pruned", 0.5, finetune_epochs=1, split=split, size=64, threads=2,
                           log=logs.append)
    return rec, work / "pruned", logs


def _assert_aligned(model: nn.Module) -> None:
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for name, m in convs:
        assert m.out_channels % 8 == 0, (name, m.out_channels)
        if name != "features.0.0":  # the stem reads the 3-channel image
            assert m.in_channels % 8 == 0, (name, m.in_channels)
        if m.groups > 1:  # depthwise convs follow their channels
            assert m.groups == m.in_channels == m.out_channels, (name, m.groups, m.in_channels, m.out_channels)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features % 8 == 0, name
        if isinstance(m, nn.Linear):
            assert m.in_features % 8 == 0 and m.out_features == 2, name


def test_prune_shrinks_params_and_macs(pruned):
    rec, out, logs = pruned
    b, a = rec["before"], rec["after"]
    assert b["params"] == 398690  # the real tiny model
    assert 0.15 < a["params"] / b["params"] < 0.6
    assert 0.2 < a["macs"] / b["macs"] <= 0.6
    assert a["fp32_bytes"] < 0.6 * b["fp32_bytes"]
    # every prunable layer of the 0.35x model halved (rounded to 8, at least 8); the stem is kept
    ch0, ch1 = b["channels"], a["channels"]
    assert ch1["features.0.0"] == ch0["features.0.0"] == 16
    assert ch1["features.18.0"] == 640 and ch0["features.18.0"] == 1280
    assert ch1["classifier.1.in_features"] == 640
    for name, c in ch1.items():
        assert c % 8 == 0 and c <= ch0[name], name
    assert {"auc", "accuracy", "threshold", "n"} <= set(a["val"]) and a["val"]["n"] == 12
    step = rec["step_log"][0]
    assert step["ratio"] == 0.5 and step["epochs_run"] == 1 and "val_auc_bn_recalibrated" in step
    assert all(math.isfinite(x[k]["auc"]) for x in (a, b) for k in ("val",))
    # records on disk
    assert json.loads((out / "prune.json").read_text())["after"]["macs"] == a["macs"]
    assert (out / "curves.png").stat().st_size > 1000 and (out / "history.csv").exists()
    assert rec["checkpoint"] == str(out / "best.pt")
    assert not list(out.rglob("*.pt.tmp")) and sorted(p.name for p in out.rglob("*.pt")) == ["best.pt"]
    table = "\n".join(logs)
    assert "before" in table and "after" in table and "MACs (64 px)" in table and "val AUC" in table


def test_pruned_checkpoint_loads_alone(pruned):
    rec, out, _ = pruned
    model, meta = load_checkpoint(out / "best.pt")
    _assert_aligned(model)
    arch = meta["arch"]
    assert arch["pruned"] is True and arch["original_width_mult"] == 0.35 and arch["prune_ratio"] == 0.5
    assert arch["params"] == rec["after"]["params"] == sum(p.numel() for p in model.parameters())
    assert meta["threshold"] is not None and 0 < meta["threshold"] < 1
    assert meta["prune"]["source_sha256"] == rec["source_sha256"]
    # provenance names the real source, not the fine-tune's temporary init file
    assert meta["init"]["init"] == "pruned" and meta["init"]["sha256"] == rec["source_sha256"]
    with torch.no_grad():
        y = model(torch.randn(4, 3, 64, 64))
    assert y.shape == (4, 2) and torch.isfinite(y).all()


def test_pruned_checkpoint_trains_further(pruned, split, tmp_path):
    from edgecxr.host.train import TrainConfig, Trainer

    _, out, _ = pruned
    cfg = TrainConfig(split=str(split), out=str(tmp_path / "more"), size=64, width_mult=0.35,
                      init=str(out / "best.pt"), epochs=1, lr=1e-4, threads=2)
    res = Trainer(cfg, log=lambda *_: None, show_progress=False).run()
    assert math.isfinite(res["metrics"]["auc"])
    model, meta = load_checkpoint(tmp_path / "more" / "best.pt")
    assert meta["arch"]["pruned"] is True
    assert sum(p.numel() for p in model.parameters()) == pruned[0]["after"]["params"]


def test_pruned_model_exports_int8_to_every_runtime(pruned, tmp_path):
    from edgecxr.device.backends import open_backend
    from edgecxr.device.bundle import verify
    from edgecxr.host.export import export_bundle, load_eval_set, run_backend
    from edgecxr.shared.metrics import softmax_pos

    _, out, _ = pruned
    ckpt = out / "best.pt"
    _, meta = load_checkpoint(ckpt)
    ev = load_eval_set(PreprocessConfig.from_dict(meta["preprocess"]), None, MINI)
    for t in TARGETS:
        s = export_bundle(ckpt, t, "int8", tmp_path / "dist", data=MINI, calibration=CALIB,
                          log=lambda *_: None, eval_set=ev)
        b = verify(s["bundle"])
        assert b.manifest["precision"] == "int8" and b.manifest["source"]["arch"]["pruned"] is True
        p = softmax_pos(run_backend(open_backend(b, threads=2), ev.x))
        assert p.shape == (64,) and np.all(np.isfinite(p))
        assert s["n"] == 64 and math.isfinite(s["auc_artifact"])
        # int8 tracks the float model (loose: a 1-epoch fine-tune on 52 images is poorly calibrated)
        assert s["auc_drop"] < 0.1 and s["label_agreement"] >= 0.75, (t, s["auc_drop"], s["label_agreement"])


def test_taylor_iterative_without_finetuning(work, split):
    from edgecxr.host.prune import prune_checkpoint

    out = work / "taylor"
    rec = prune_checkpoint(TINY, out, 0.5, steps=2, importance="taylor", finetune_epochs=0, split=split,
                           threads=2, log=lambda *_: None)
    assert [s["ratio"] for s in rec["step_log"]] == [0.25, 0.5]
    assert rec["step_log"][0]["macs"] > rec["step_log"][1]["macs"] == rec["after"]["macs"]
    assert rec["after"]["macs"] <= 0.6 * rec["before"]["macs"]
    model, meta = load_checkpoint(out / "best.pt")
    _assert_aligned(model)
    assert meta["threshold_rule"] == "youden" and meta["val_metrics"]["n"] == 12  # chosen on validation
    assert meta["arch"]["prune_importance"] == "taylor" and not (out / "curves.png").exists()


def test_pruned_checkpoint_prunes_again(pruned, tmp_path, split):
    from edgecxr.host.prune import prune_checkpoint

    rec0, out0, _ = pruned
    rec = prune_checkpoint(out0 / "best.pt", tmp_path / "again", 0.25, finetune_epochs=0, split=split, bn_images=0,
                           threads=2, log=lambda *_: None)
    assert rec["before"]["params"] == rec0["after"]["params"] > rec["after"]["params"]
    model, meta = load_checkpoint(tmp_path / "again" / "best.pt")
    _assert_aligned(model)
    assert meta["arch"]["original_width_mult"] == 0.35 and meta["arch"]["original_params"] == 398690
    assert rec["bn_images"] == 0 and "val_auc_bn_recalibrated" not in rec["step_log"][0]


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.2, float("nan")])
def test_bad_ratio_is_refused_and_nothing_written(work, split, ratio):
    from edgecxr.host.prune import prune_checkpoint

    out = work / "bad" / f"r{ratio}"
    with pytest.raises(EdgeCXRError, match="ratio"):
        prune_checkpoint(TINY, out, ratio, finetune_epochs=0, split=split, log=lambda *_: None)
    assert not out.exists()


def test_ratio_that_empties_a_layer_is_refused(work, split):
    from edgecxr.host.prune import prune_checkpoint

    out = work / "bad" / "empty"
    with pytest.raises(EdgeCXRError, match="empty"):  # the 0.35x model has 8-channel layers
        prune_checkpoint(TINY, out, 0.95, finetune_epochs=0, split=split, log=lambda *_: None)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_not_an_edgecxr_mobilenet_is_refused(work, split, tmp_path):
    from edgecxr.host.prune import prune_checkpoint

    raw = tmp_path / "raw.pt"
    torch.save(nn.Linear(2, 2).state_dict(), raw)
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    other = tmp_path / "resnet.pt"
    save_checkpoint(other, nn.Linear(2, 2), {"name": "resnet18", "num_classes": 2}, PreprocessConfig(size=64), 0.5)
    for path, needle in ((raw, "not an edgecxr checkpoint"), (text, "not a readable checkpoint"),
                         (other, "unsupported architecture"), (tmp_path / "missing.pt", "not found")):
        out = tmp_path / f"out-{path.stem}"
        with pytest.raises(EdgeCXRError, match=needle) as ei:
            prune_checkpoint(path, out, 0.5, finetune_epochs=0, split=split, log=lambda *_: None)
        assert str(path) in str(ei.value)
        assert not out.exists()


def test_existing_output_is_not_replaced(work, split, tmp_path):
    from edgecxr.host.prune import prune_checkpoint

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(EdgeCXRError, match="--force"):
        prune_checkpoint(TINY, out, 0.5, finetune_epochs=0, split=split, log=lambda *_: None)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_prune_command(split, tmp_path):
    import typer
    from typer.testing import CliRunner

    from edgecxr.cli.prune import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test app"""

    register(app)
    runner = CliRunner()
    h = runner.invoke(app, ["prune", "--help"])
    assert h.exit_code == 0 and "--ratio" in h.output and "--finetune-epochs" in h.output
    assert "--importance" in h.output and "Example" in h.output
    out = tmp_path / "cli"
    r = runner.invoke(app, ["prune", str(TINY), "--ratio", "0.25", "--split", str(split), "--out", str(out),
                            "--finetune-epochs", "0", "--importance", "taylor", "--threads", "2"])
    assert r.exit_code == 0, r.output
    assert "pruned checkpoint" in r.output and (out / "best.pt").exists() and (out / "prune.json").exists()
    _, meta = load_checkpoint(out / "best.pt")
    assert meta["arch"]["prune_ratio"] == 0.25
    bad = runner.invoke(app, ["prune", str(TINY), "--ratio", "1", "--split", str(split), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and isinstance(bad.exception, EdgeCXRError) and not (tmp_path / "x").exists()
