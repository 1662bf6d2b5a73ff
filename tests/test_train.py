"""Training and evaluation on real X-rays at a tiny size (seconds)."""

import csv
import json

import pytest

from edgecxr.host.model import load_checkpoint

from .conftest import MINI, TINY, assert_clean_error, run_cli


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "split.json"
    p = run_cli("data", "split", MINI, "--out", out, "--seed", "0")
    assert p.returncode == 0, p.stderr
    return out


def test_train_resume_and_evaluate(split, tmp_path):
    run = tmp_path / "run"
    common = ["--split", split, "--out", run, "--size", "48", "--width", "0.35", "--batch-size", "16", "--threads", "2"]
    p = run_cli("train", *common, "--epochs", "1")
    assert p.returncode == 0, p.stderr
    assert {"config.json", "history.csv", "best.pt", "last.pt", "metrics.json", "curves.png", "roc_val.png",
            "val_predictions.csv"} <= {f.name for f in run.iterdir()}
    # a new run into the same folder is refused; --resume continues to 2 epochs
    assert_clean_error(run_cli("train", *common, "--epochs", "2"), "--resume")
    p = run_cli("train", *common, "--epochs", "2", "--resume")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["size"] == 48 and cfg["preprocess"]["size"] == 48 and cfg["env"]["torch"]
    model, meta = load_checkpoint(run / "best.pt")
    assert meta["arch"]["name"] == "mobilenet_v2" and meta["arch"]["width_mult"] == 0.35
    assert 0.0 <= meta["threshold"] <= 1.0
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    n_val = sum(1 for i in json.loads(split.read_text())["items"] if i["split"] == "val")
    assert m["n"] == n_val and 0 <= m["auc_ci95"][0] <= m["auc"] <= m["auc_ci95"][1] <= 1
    p = run_cli("evaluate", run / "best.pt", "--split", split)
    assert p.returncode == 0, p.stderr
    assert "AUC" in p.stdout and "sensitivity" in p.stdout


def test_trained_model_learns():
    """The shipped tiny model (trained with `edgecxr train`) separates real pneumonia from normal
    on validation images it never saw."""
    p = run_cli("evaluate", TINY, "--data", MINI)
    assert p.returncode == 0, p.stderr
    auc = float(p.stdout.split("AUC ")[1].split()[0])
    assert auc > 0.9


def test_init_imagenet_offline_or_online(split, tmp_path):
    p = run_cli("train", "--split", split, "--out", tmp_path / "r", "--size", "32", "--epochs", "1",
                "--init", "imagenet", env={"TORCH_HOME": str(tmp_path / "torch_home")}, timeout=300)
    if p.returncode != 0:  # offline (CI): one clear line with the way out
        assert_clean_error(p, "imagenet", "--init none")
    else:  # a machine with network really downloads torchvision's weights
        assert (tmp_path / "r" / "best.pt").exists()


def test_init_from_path_and_bad_path(split, tmp_path):
    p = run_cli("train", "--split", split, "--out", tmp_path / "r", "--size", "32", "--width", "0.35",
                "--epochs", "1", "--init", TINY)
    assert p.returncode == 0, p.stderr
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["init"]["init"] == str(TINY)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_clean_error(run_cli("train", "--split", split, "--out", tmp_path / "r2", "--init", bad), str(bad))
    assert_clean_error(run_cli("train", "--split", tmp_path / "none.json", "--out", tmp_path / "r3"), "not found")


def test_train_config_defaults_are_what_the_cli_ships():
    """One source: TrainConfig's defaults are the command line's (acquisition recipe, sens=0.95)."""
    from edgecxr.host.train_config import RECIPES, TrainConfig, apply_recipe

    cfg = TrainConfig(split="s.json", out="o")
    assert cfg.recipe == "acquisition" and cfg.threshold_rule == "sens=0.95"
    assert apply_recipe(cfg, "acquisition") == cfg  # the defaults are the acquisition recipe's values
    assert {k: getattr(cfg, k) for k in RECIPES["acquisition"]} == RECIPES["acquisition"]


def test_replayed_run_config_equals_the_original(tmp_path):
    """`edgecxr train --config RUN/config.json`: the saved settings come back exactly; given options override."""
    from dataclasses import asdict, replace

    from edgecxr.host.train_config import TrainConfig, apply_recipe, load_run_config, resolve_train_config
    from edgecxr.shared.errors import EdgeCXRError

    orig = apply_recipe(TrainConfig(split="splits/mini.json", out=str(tmp_path / "run"), size=48, width_mult=0.35,
                                    epochs=3, min_lr=1e-5, threshold_rule="youden", seed=7), "paper", {"zoom": 0.05})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"train": asdict(orig), "preprocess": {}, "env": {}}))
    saved = load_run_config(path)
    assert resolve_train_config({}, saved=saved) == orig
    again = resolve_train_config({"out": "elsewhere", "epochs": 1}, saved=saved)
    assert again == replace(orig, out="elsewhere", epochs=1)  # the recipe's augmentation (zoom 0.05) is kept
    assert resolve_train_config({}, saved=saved, recipe="acquisition").zoom == 0.15
    for text, needle in (("{not json", "JSON"), ('{"env": {}}', '"train"'), ('{"train": {"lr": 1, "warp": 2}}', "warp")):
        path.write_text(text)
        with pytest.raises(EdgeCXRError, match=needle) as e:
            load_run_config(path)
        assert str(path) in str(e.value)


def test_train_replays_a_run_from_its_config(split, tmp_path):
    """A real tiny run replayed with --config (another --out, one option overridden) saves the same settings."""
    first = tmp_path / "first"
    p = run_cli("train", "--split", split, "--out", first, "--size", "32", "--width", "0.35", "--epochs", "1",
                "--batch-size", "16", "--threads", "2", "--max-train", "48", "--max-val", "24", "--recipe", "paper",
                "--zoom", "0.05", "--threshold", "youden", "--seed", "3")
    assert p.returncode == 0, p.stderr
    second = tmp_path / "second"
    p = run_cli("train", "--config", first / "config.json", "--out", second, "--seed", "4")
    assert p.returncode == 0, p.stderr
    a = json.loads((first / "config.json").read_text())["train"]
    b = json.loads((second / "config.json").read_text())["train"]
    assert b == {**a, "out": str(second), "seed": 4}
    assert a["recipe"] == "paper" and a["zoom"] == 0.05 and a["threshold_rule"] == "youden"
    assert_clean_error(run_cli("train", "--config", tmp_path / "nope.json"), str(tmp_path / "nope.json"), "not found")
    assert_clean_error(run_cli("train", "--size", "32"), "--split", "--config")
