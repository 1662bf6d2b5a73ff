"""Training recipes (acquisition-aware augmentation, EMA, mixup), calibration metrics and
re-thresholded checkpoints, on real X-rays at tiny sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgecxr.host.model import load_checkpoint
from edgecxr.host.train import (
    RECIPES,
    TrainConfig,
    apply_recipe,
    augment,
    ema_warmup_fn,
    photometric,
    resolve_device,
)
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.metrics import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)

from .conftest import MINI, NPZ, TINY, assert_clean_error, run_cli


def _real_batch(n: int = 6, size: int = 64) -> torch.Tensor:
    from edgecxr.shared.data import scan
    from edgecxr.shared.imageio import load_grey
    from edgecxr.shared.preprocess import resize_grey

    items = scan(MINI).items[:n]
    return torch.from_numpy(np.stack([resize_grey(load_grey(MINI / it.path), size) for it in items]).astype(np.float32))


def test_augmentation_is_seeded_bounded_and_changes_images():
    x = _real_batch()
    a1 = photometric(augment(x, 10, True, torch.Generator().manual_seed(3), 0.15, 0.06),
                     torch.Generator().manual_seed(4), 0.3, 0.03, 1.2)
    a2 = photometric(augment(x, 10, True, torch.Generator().manual_seed(3), 0.15, 0.06),
                     torch.Generator().manual_seed(4), 0.3, 0.03, 1.2)
    assert a1.shape == x.shape and torch.equal(a1, a2)  # same seeds, same images
    assert float(a1.min()) >= 0 and float(a1.max()) <= 1
    assert float((a1 - x).abs().mean()) > 0.01  # it does something
    # with every strength at 0 the photometric step leaves the images alone
    assert torch.equal(photometric(x, torch.Generator().manual_seed(0), 0, 0, 0), x.clamp(0, 1))
    # the paper recipe's draws are unchanged by the new options at 0 (old runs resume the same)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment(x, 10, True, g1), augment(x, 10, True, g2, 0.0, 0.0))


def test_blur_keeps_mean_and_smooths():
    from edgecxr.host.train import _gaussian_blur

    x = _real_batch(3)
    y = _gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(y[0], x[0], atol=1e-5)  # sigma 0: identity
    assert abs(float(y[2].mean()) - float(x[2].mean())) < 0.01
    tv = [float((t[:, 1:] - t[:, :-1]).abs().mean()) for t in (x[2], y[1], y[2])]
    assert tv[0] > tv[1] > tv[2]


def test_recipes_and_device_errors():
    cfg = TrainConfig(split="s.json", out="o")
    r = apply_recipe(cfg, "acquisition", {"zoom": 0.05})
    assert r.recipe == "acquisition" and r.zoom == 0.05 and r.intensity == RECIPES["acquisition"]["intensity"]
    assert apply_recipe(cfg, "paper").zoom == 0 and apply_recipe(cfg, "robust").ema > 0
    with pytest.raises(EdgeCXRError, match="unknown training recipe"):
        apply_recipe(cfg, "magic")
    with pytest.raises(EdgeCXRError, match="unknown --device"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(EdgeCXRError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"


def test_ema_warmup_follows_the_model_early():
    fn = ema_warmup_fn(0.999)
    avg, cur = [torch.zeros(3), torch.tensor(0)], [torch.ones(3), torch.tensor(7)]
    fn(avg, cur, torch.tensor(0))  # first update: decay min(0.999, 1/10) = 0.1
    assert torch.allclose(avg[0], torch.full((3,), 0.9)) and int(avg[1]) == 7
    for n in range(1, 200):
        fn(avg, cur, torch.tensor(n))
    assert float(avg[0].min()) > 0.999  # a plain 0.999 EMA would still be at 1 - 0.999**200 = 0.18


def test_calibration_metrics():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(int)
    p_true = 1 / (1 + np.exp(-z))
    assert expected_calibration_error(y, p_true) < 0.02
    p_over = 1 / (1 + np.exp(-2.0 * z))  # overconfident by a factor 2
    assert expected_calibration_error(y, p_over) > 0.05
    t = fit_temperature(y, p_over)
    assert math.isclose(t, 2.0, rel_tol=0.1)
    assert expected_calibration_error(y, apply_temperature(p_over, t)) < 0.02
    bins = reliability_bins(y, p_true)
    assert sum(b["n"] for b in bins) == len(y) and len(bins) == 15


def test_train_with_a_recipe_then_resume(tmp_path):
    split = tmp_path / "split.json"
    assert run_cli("data", "split", MINI, "--out", split, "--seed", "0").returncode == 0
    run = tmp_path / "run"
    common = ["--split", split, "--out", run, "--size", "48", "--width", "0.35", "--batch-size", "16",
              "--threads", "2", "--recipe", "robust-mixup", "--noise", "0.01", "--device", "cpu"]
    p = run_cli("train", *common, "--epochs", "1")
    assert p.returncode == 0, p.stderr
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert cfg["recipe"] == "robust-mixup" and cfg["noise"] == 0.01 and cfg["mixup"] > 0 and cfg["ema"] > 0
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert last["ema"] is not None
    p = run_cli("train", *common, "--epochs", "2", "--resume")
    assert p.returncode == 0, p.stderr
    model, meta = load_checkpoint(run / "best.pt")
    assert meta["train"]["recipe"] == "robust-mixup"
    assert_clean_error(run_cli("train", "--split", split, "--out", tmp_path / "r2", "--recipe", "magic"),
                       "unknown training recipe")


def test_evaluate_calibration_and_save_threshold(tmp_path):
    split = tmp_path / "split.json"
    assert run_cli("data", "split", MINI, "--out", split, "--seed", "0").returncode == 0
    out, saved, rel = tmp_path / "m.json", tmp_path / "sens.pt", tmp_path / "rel.png"
    p = run_cli("evaluate", TINY, "--split", split, "--threshold", "sens=0.9", "--save", saved,
                "--out", out, "--reliability", rel)
    assert p.returncode == 0, p.stderr
    assert "ECE" in p.stdout and rel.stat().st_size > 1000
    m = json.loads(out.read_text())["metrics"]
    assert 0 <= m["calibration"]["ece"] <= 1 and m["sensitivity"] >= 0.9
    _, meta = load_checkpoint(saved)
    assert meta["threshold"] == pytest.approx(m["threshold"]) and meta["threshold_rule"] == "sens=0.9"
    before = TINY.read_bytes()
    assert_clean_error(run_cli("evaluate", TINY, "--split", split, "--threshold", "youden", "--save", TINY),
                       "new file")
    assert TINY.read_bytes() == before
    assert_clean_error(run_cli("evaluate", TINY, "--data", MINI, "--save", tmp_path / "x.pt"), "--split")
    assert not (tmp_path / "x.pt").exists()
    assert_clean_error(run_cli("evaluate", TINY, "--split", split, "--fold-temperature"), "--save")

    # folding the fitted temperature into the classifier: same ranking, same decisions, and the
    # temperature that would fit the folded model is 1
    folded, out2 = tmp_path / "folded.pt", tmp_path / "m2.json"
    p = run_cli("evaluate", TINY, "--split", split, "--threshold", "sens=0.9", "--save", folded, "--fold-temperature")
    assert p.returncode == 0, p.stderr
    assert "folded temperature" in p.stderr
    p = run_cli("evaluate", folded, "--split", split, "--out", out2)
    assert p.returncode == 0, p.stderr
    m2 = json.loads(out2.read_text())["metrics"]
    assert m2["auc"] == pytest.approx(m["auc"], abs=1e-9)
    assert (m2["tp"], m2["fp"], m2["tn"], m2["fn"]) == (m["tp"], m["fp"], m["tn"], m["fn"])
    assert m2["calibration"]["temperature_fit_here"] == pytest.approx(1.0, abs=0.02)
    _, fmeta = load_checkpoint(folded)
    assert fmeta["temperature_folded"] == pytest.approx(m["calibration"]["temperature_fit_here"])


def test_evaluate_npz_names_its_part():
    p = run_cli("evaluate", TINY, "--data", NPZ)
    assert p.returncode == 0, p.stderr
    assert "official val part" in p.stderr and "n=40" in p.stdout
    p = run_cli("evaluate", TINY, "--data", f"{NPZ}#train")
    assert p.returncode == 0, p.stderr
    assert "training images" in p.stderr and "n=120" in p.stdout
    assert_clean_error(run_cli("evaluate", TINY, "--data", f"{NPZ}#test"), "no test_images")
