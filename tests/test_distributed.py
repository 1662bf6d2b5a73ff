"""`edgecxr train` under torchrun: 2 CPU processes (gloo, DistributedDataParallel) on real X-rays.

Each torchrun start costs ~15 s of imports on 2 shared cores, so the runs are shared across the
tests of this module: an uninterrupted 2-epoch run, and the same run with rank 1 killed (SIGKILL)
when it starts epoch 2, then resumed.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import MINI, assert_clean_error, run_cli

SETTINGS = ["--size", "64", "--width", "0.35", "--batch-size", "16", "--recipe", "robust"]  # EMA + augmentations


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, *args, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """python -m torch.distributed.run --nproc_per_node=N -m edgecxr ARGS (the real launcher)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port", str(free_port()),
           "-m", "edgecxr", *map(str, args)]
    return subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def error_lines(p: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("edgecxr: error:")]


def history(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader((run / "history.csv").open())]


def weights(path: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    return {**blob["state_dict"], **{f"ema.{k}": v for k, v in (blob.get("ema") or {}).items()}}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "split.json"
    p = run_cli("data", "split", MINI, "--out", out, "--seed", "0")
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def runs(split, tmp_path_factory):
    """full: 2 epochs uninterrupted. killed: the same, rank 1 SIGKILLed at the start of epoch 2."""
    base = tmp_path_factory.mktemp("ddp")
    full, killed = base / "full", base / "killed"
    rec = {"EDGECXR_DIST_RECORD_SAMPLES": "1"}
    p_full = torchrun(2, "train", "--split", split, "--out", full, *SETTINGS, "--epochs", "2", env=rec)
    assert p_full.returncode == 0, p_full.stderr[-3000:]
    p_kill = torchrun(2, "train", "--split", split, "--out", killed, *SETTINGS, "--epochs", "2",
                      env={**rec, "EDGECXR_TEST_KILL_RANK": "1:2"})
    return {"full": full, "killed": killed, "p_full": p_full, "p_kill": p_kill, "split": split}


def test_ranks_see_disjoint_data_and_rank0_writes_one_run(runs):
    full, p = runs["full"], runs["p_full"]
    n_train = sum(1 for i in json.loads(runs["split"].read_text())["items"] if i["split"] == "train")
    seen = json.loads((full / "dist-samples.json").read_text())["epochs"]
    assert sorted(seen) == ["1", "2"]
    for ep in seen.values():
        r0, r1 = ep["0"], ep["1"]
        assert len(r0) == len(r1) == n_train // 2  # every rank the same number of steps
        assert not set(r0) & set(r1)  # disjoint shares
        assert len(set(r0) | set(r1)) == 2 * (n_train // 2) and max(r0 + r1) < n_train
    assert seen["1"]["0"] != seen["2"]["0"]  # set_epoch: a new permutation every epoch
    # one run folder, written by rank 0 only: one best.pt, one last.pt, no per-rank copies or temp files
    assert sorted(f.name for f in full.glob("*.pt")) == ["best.pt", "last.pt"]
    assert not list(full.glob(".*"))
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["distributed"]["world_size"] == 2 and cfg["distributed"]["backend"] == "gloo"
    assert cfg["distributed"]["batch_per_process"] == 8 and cfg["train"]["batch_size"] == 16
    assert [int(r["epoch"]) for r in history(full)] == [1, 2]
    assert p.stdout.count("best checkpoint:") == 1  # rank 0 reports, the others stay quiet
    assert (p.stdout + p.stderr).count("epoch 2: train_loss") == 1
    last = torch.load(full / "last.pt", map_location="cpu", weights_only=False)
    assert len(last["distributed"]["rng"]) == 2
    g0, g1 = (torch.Generator().set_state(r["torch_gen"]) for r in last["distributed"]["rng"])
    assert torch.rand(4, generator=g0).tolist() != torch.rand(4, generator=g1).tolist()  # per-rank augmentation


def test_checkpoint_loads_and_exports(runs, tmp_path):
    best = runs["full"] / "best.pt"
    p = run_cli("evaluate", best, "--data", MINI)
    assert p.returncode == 0, p.stderr
    p = run_cli("export", best, "--target", "nuc", "--precision", "fp32", "--data", MINI, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    assert manifest  # a verified bundle


def test_killed_rank_keeps_last_checkpoint_and_resume_continues_the_same_run(runs):
    killed, full, p = runs["killed"], runs["full"], runs["p_kill"]
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 1, p.stderr[-3000:]  # the survivor's one line (rank 1 died without a word)
    assert "rank 0" in lines[0] and "epoch 2" in lines[0] and "last.pt keeps epoch 1" in lines[0], lines[0]
    assert "--resume" in lines[0]
    assert sorted(f.name for f in killed.glob("*.pt")) == ["best.pt", "last.pt"] and not list(killed.glob(".*"))
    assert torch.load(killed / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 0
    assert [int(r["epoch"]) for r in history(killed)] == [1]
    # resumed with the same command: the same run as the uninterrupted one, to the last bit
    p = torchrun(2, "train", "--split", runs["split"], "--out", killed, *SETTINGS, "--epochs", "2", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert history(killed) == history(full)
    a, b = weights(full / "last.pt"), weights(killed / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a resume with another world size, or without torchrun, is refused before anything changes
    before = (killed / "last.pt").read_bytes()
    p = torchrun(1, "train", "--split", runs["split"], "--out", killed, "--epochs", "3", "--resume")
    lines = error_lines(p)
    assert p.returncode != 0 and len(lines) == 1 and "2 processes" in lines[0] and "not 1" in lines[0], p.stderr[-2000:]
    assert_clean_error(run_cli("train", "--split", runs["split"], "--out", killed, "--epochs", "3", "--resume"),
                       "2 processes", "torchrun")
    assert (killed / "last.pt").read_bytes() == before


def test_more_processes_than_training_images_fails_once_clearly(split, tmp_path):
    p = torchrun(2, "train", "--split", split, "--out", tmp_path / "r", *SETTINGS, "--max-train", "2")
    lines = error_lines(p)
    assert p.returncode != 0 and len(lines) == 1, p.stderr[-2000:]  # rank 0 says it, once
    assert "2 processes need at least 4 training images" in lines[0] and str(split) in lines[0]
    assert not (tmp_path / "r" / "last.pt").exists()


def test_sync_bn_outside_torchrun_is_refused(split, tmp_path):
    assert_clean_error(run_cli("train", "--split", split, "--out", tmp_path / "r", "--sync-bn"), "torchrun")
