"""Board service and `edgecxr agent` / `edgecxr remote` end to end: a real agent (make_agent) and a real
host over ptys joined by the fault relay, with a real exported bundle, real X-rays and the real bench."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from edgecxr import LABELS
from edgecxr.cli.link import register
from edgecxr.device.bundle import MANIFEST, pack, verify
from edgecxr.device.link import Agent, LinkConfig, RemoteClient, RemoteError
from edgecxr.device.link.board import make_agent
from edgecxr.device.link.host import bench_remote, ensure_bundle, predict_remote, push_bundle
from edgecxr.shared.errors import BundleError, EdgeCXRError
from edgecxr.shared.fsutil import portable_path, sha256_file
from tests.conftest import MINI, ROOT

from .cable import PtyPort
from .faults import FaultConfig, FaultRelay

BUNDLE = "nuc-int8"  # OpenVINO: the fastest runtime here
LINK = LinkConfig(ack_timeout=0.5, max_retries=6)  # dead after 3.5 s: tolerant of a busy 2-core machine
FAST = LinkConfig(ack_timeout=0.25, max_retries=4)  # dead after 1.25 s: for the cable-pull test
NOISY = FaultConfig(drop=1e-5, drop_span=24, corrupt=3e-5, delay=0.02, delay_s=0.02, seed=5)
IMAGES = [ROOT / "tests/data/fullres/IM-0206-0001.jpeg", ROOT / "tests/data/fullres/person1320_virus_2277.jpeg"]
HEAVY = ("torch", "torchvision", "litert_torch", "nncf", "onnx", "matplotlib")


@dataclass
class Board:
    relay: FaultRelay
    agent: Agent
    store: Path
    config: LinkConfig
    ports: list[PtyPort] = field(default_factory=list)
    clients: list[RemoteClient] = field(default_factory=list)

    @property
    def client(self) -> RemoteClient:
        if not self.clients:
            port = self.relay.open_b()
            self.ports.append(port)
            self.clients.append(RemoteClient(port, config=self.config))
        return self.clients[0]

    def installed(self, name: str) -> dict[str, bytes]:
        d = self.store / "bundles" / name
        return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Callable[..., Board]]:
    boards: list[Board] = []

    def make(faults: FaultConfig | None = None, config: LinkConfig = LINK, data: Path | None = MINI) -> Board:
        relay = FaultRelay.pty(faults or FaultConfig()).start()
        pa = relay.open_a()
        store = tmp_path / "board"
        agent = make_agent(pa, store, data=data, device="board-x", config=config)
        agent.start()
        b = Board(relay, agent, store, config, [pa])
        boards.append(b)
        return b

    yield make
    for b in boards:
        for c in b.clients:
            c.close()
        b.agent.stop()
        b.relay.close()
        for p in b.ports:
            p.close()
        assert b.agent.error is None, f"agent crashed: {b.agent.error!r}"


def cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """edgecxr (test app)"""

    register(app)
    return app


def test_remote_bench_installs_the_bundle_and_stores_the_board_record(bundles, board, tmp_path: Path) -> None:
    rig = board(faults=NOISY)
    src = bundles[BUNDLE]
    lines: list[str] = []
    results = tmp_path / "results"
    rec, path = bench_remote(rig.client, src, results, {"iterations": 20, "warmup": 2}, echo=lines.append)

    # The bundle crossed the noisy line intact and was installed only after it verified.
    installed = rig.store / "bundles" / src.name
    assert verify(installed).manifest == verify(src).manifest
    assert sha256_file(installed / MANIFEST) == sha256_file(src / MANIFEST)
    assert rig.installed(src.name) == {p.name: p.read_bytes() for p in sorted(src.iterdir())}
    assert not [p for p in (rig.store / "incoming").iterdir() if p.is_file()]  # the archive is not kept
    ab, ba = rig.relay.stats["a->b"], rig.relay.stats["b->a"]
    assert ab.flips + ba.flips > 0 and ab.dropouts + ba.dropouts > 0  # the line really was noisy
    assert any(ln.startswith(f"pushed {src.name}.tar") for ln in lines), lines
    assert any("board: benchmarking" in ln for ln in lines), lines

    # The board's record landed here, as `edgecxr bench` would have written it on the board.
    assert path == results / "board-x.jsonl"
    stored = [json.loads(x) for x in path.read_text().splitlines()]
    assert stored == [json.loads(json.dumps(rec))]
    r = stored[0]
    assert r["kind"] == "edgecxr-bench" and r["device"] == "board-x"
    assert r["subject"]["name"] == BUNDLE and r["subject"]["backend"] == "openvino"
    assert r["subject"]["manifest_sha256"] == sha256_file(src / MANIFEST)
    assert r["vs_float"]["matched"] == 64 and r["data"]["n"] == 64 and r["data"]["source"] == portable_path(MINI)
    assert r["latency_ms"]["n"] == 20 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"]
    assert r["accuracy"]["auc"] > 0.5
    # ...and a copy stays on the board.
    assert json.loads((rig.store / "results" / "board-x.jsonl").read_text()) == r

    # The board already has it: nothing is pushed again.
    received = rig.agent.files_received
    lines.clear()
    assert ensure_bundle(rig.client, src, echo=lines.append) == src.name
    assert rig.agent.files_received == received and "already on the board" in lines[0]


def tampered_archive(src: Path, tmp: Path) -> Path:
    """A well-formed archive whose model file does not match its manifest."""
    copy = tmp / "tampered" / src.name
    shutil.copytree(src, copy)
    model = copy / verify(src).manifest["model_file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x40
    model.write_bytes(bytes(data))
    return pack(copy, tmp / f"{src.name}.tar")


def test_corrupt_archives_are_rejected_and_the_installed_bundle_stays(bundles, board, tmp_path: Path) -> None:
    rig = board()
    src = bundles[BUNDLE]
    push_bundle(rig.client, src, echo=lambda _: None)
    before = rig.installed(src.name)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (rig.store / "bundles" / src.name).iterdir()}

    good = pack(src, tmp_path / "good" / f"{src.name}.tar")
    tampered = tampered_archive(src, tmp_path)
    truncated = tmp_path / "truncated" / f"{src.name}.tar"
    truncated.parent.mkdir()
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage" / f"{src.name}.tar"
    garbage.parent.mkdir()
    garbage.write_bytes(os.urandom(30_000))

    # The host checks an archive before sending it...
    with pytest.raises(BundleError, match="sha256 does not match"):
        push_bundle(rig.client, tampered, echo=lambda _: None)
    # ...and the board refuses one that arrives anyway.
    for archive, why in [(tampered, "sha256 does not match the manifest"), (truncated, ""),
                         (garbage, "not a readable bundle archive")]:
        with pytest.raises(RemoteError, match=f"rejected {src.name}.tar: .*{why}") as err:
            push_bundle(rig.client, archive, echo=lambda _: None, check=False)
        assert "\n" not in str(err.value)
        assert rig.installed(src.name) == before
        assert {p.name: p.stat().st_mtime_ns for p in (rig.store / "bundles" / src.name).iterdir()} == mtimes
        verify(rig.store / "bundles" / src.name)
        assert sorted(p.name for p in (rig.store / "bundles").iterdir()) == [src.name]  # no temp folders left
        assert not [p for p in (rig.store / "incoming").iterdir() if p.is_file()]
    with pytest.raises(RemoteError, match="is unchanged"):
        push_bundle(rig.client, tampered, echo=lambda _: None, check=False)
    assert rig.client.request("bundles")["bundles"][0]["manifest_sha256"] == sha256_file(src / MANIFEST)


def test_push_resumes_after_the_cable_is_pulled(bundles, board, tmp_path: Path) -> None:
    rig = board(config=FAST)
    src = bundles["nuc-fp32"]
    lines: list[str] = []

    def echo(msg: str) -> None:
        lines.append(msg)
        if "50%" in msg and not any("link lost" in ln for ln in lines):
            rig.relay.cut(3.0)  # cable out for 3 s (the link gives up after 1.25 s), mid-transfer

    res = push_bundle(rig.client, src, echo=echo)
    assert any("link lost" in ln for ln in lines), lines
    assert 0 < res["resumed_from"] < res["size"] and res["bytes_sent"] == res["size"] - res["resumed_from"]
    assert "resumed at" in lines[-1]
    assert rig.installed(src.name) == {p.name: p.read_bytes() for p in sorted(src.iterdir())}


def test_remote_commands(bundles, board, tmp_path: Path) -> None:
    """push, info, bench and predict as typed, each opening the port by its device path."""
    rig = board()
    port = rig.relay.b_path
    assert port is not None
    app, runner = cli_app(), CliRunner()

    def run(*args: Any, error: bool = False) -> Any:
        res = runner.invoke(app, [*map(str, args), "--port", port])
        if not error:
            assert res.exception is None or isinstance(res.exception, SystemExit), res.output
        return res

    src = bundles[BUNDLE]
    res = run("remote", "push", src)
    assert res.exit_code == 0 and f"installed {src.name} on the board" in res.stderr

    res = run("remote", "info")
    assert res.exit_code == 0
    assert "device:    board-x" in res.stdout and f"data:      {MINI}" in res.stdout
    assert "bundles:   1" in res.stdout and src.name in res.stdout and "openvino" in res.stdout

    results = tmp_path / "results"
    res = run("remote", "bench", src, "--results", results, "--iterations", "5", "--warmup", "1",
              "--max-images", "16")
    assert res.exit_code == 0, res.output
    assert "already on the board" in res.stderr and "board: benchmarking" in res.stderr
    assert res.stdout.startswith("bundle ") and f"-> {results / 'board-x.jsonl'}" in res.stdout
    (rec,) = [json.loads(x) for x in (results / "board-x.jsonl").read_text().splitlines()]
    assert rec["device"] == "board-x" and rec["data"]["n"] == 16 and rec["latency_ms"]["n"] == 5

    res = run("remote", "predict", *IMAGES, "--bundle", src.name)
    assert res.exit_code == 0, res.output
    out = res.stdout.splitlines()
    assert len(out) == 2
    for img, line in zip(IMAGES, out, strict=True):
        assert line.startswith(f"{img}: ") and line.split()[1] in LABELS and "p(pneumonia)=" in line
    assert sorted(p.name for p in (rig.store / "images").iterdir()) == sorted(p.name for p in IMAGES)

    res = run("remote", "predict", IMAGES[0], "--bundle", "rpi4-int8", error=True)
    assert isinstance(res.exception, EdgeCXRError) and "no bundle 'rpi4-int8' on the board" in str(res.exception)

    for cmd in ("agent", "remote push", "remote bench", "remote predict", "remote info"):
        h = runner.invoke(app, [*cmd.split(), "--help"])
        assert h.exit_code == 0 and "Example" in h.stdout, cmd


def test_predict_with_a_local_bundle_folder_pushes_it_first(bundles, board) -> None:
    rig = board(data=None)
    rows = predict_remote(rig.client, IMAGES, str(bundles[BUNDLE]), echo=lambda _: None)
    assert [r["file"] for r in rows] == [str(p) for p in IMAGES]
    assert all(r["label"] in LABELS and 0 <= r["prob"] <= 1 and r["bundle"] == BUNDLE for r in rows)
    # No --data on this board and the bundle's reference images are on the host only: one clear line.
    mpath = rig.store / "bundles" / BUNDLE / MANIFEST
    m = json.loads(mpath.read_text())
    m["reference"]["data"] = {"data": "/nowhere/kermany_mini"}
    mpath.write_text(json.dumps(m))
    with pytest.raises(RemoteError, match="bench: .*start the agent with --data DIR or push images"):
        rig.client.request("bench", {"bundle": BUNDLE, "iterations": 1, "warmup": 0}, timeout=60)
    # ...so the host sends its own labelled images along (packed, unpacked under images/ on the board).
    rec, _ = bench_remote(rig.client, bundles[BUNDLE], None, {"iterations": 2, "warmup": 0, "max_images": 8},
                          images=MINI, echo=lambda _: None)
    assert rec["data"]["source"] == portable_path(rig.store / "images" / MINI.name) and rec["data"]["n"] == 8
    assert rec["vs_float"]["matched"] == 8
    assert sorted(p.name for p in (rig.store / "images" / MINI.name).iterdir()) == ["NORMAL", "PNEUMONIA"]


def _read_until(proc: subprocess.Popen, needle: str, timeout: float = 60) -> str:
    assert proc.stderr is not None
    seen = ""
    end = time.monotonic() + timeout
    while needle not in seen:
        assert proc.poll() is None, seen + proc.stderr.read()
        assert time.monotonic() < end, seen
        if select.select([proc.stderr], [], [], 0.5)[0]:
            seen += proc.stderr.readline()
    return seen


def test_agent_command_serves_without_torch_and_stops_on_ctrl_c(bundles, tmp_path: Path) -> None:
    relay = FaultRelay.pty().start()
    code = ("import atexit, sys, typer\n"
            "atexit.register(lambda: print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & set("
            f"{HEAVY!r})), file=sys.stderr))\n"
            "from edgecxr.cli.link import register\n"
            "app = typer.Typer()\n"
            "app.callback()(lambda: None)\n"
            "register(app)\n"
            "app()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "agent", "--port", str(relay.a_path),
                             "--store", str(tmp_path / "store"), "--data", str(MINI), "--device", "board-y"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = relay.open_b()
    client = RemoteClient(port, config=LINK)
    try:
        _read_until(proc, "serving on")
        info = client.info()
        assert info["device"] == "board-y" and info["bundles"] == [] and info["data"] == str(MINI)
        assert {"bench", "bundles", "predict"} <= set(info["ops"])
        assert info["device_facts"]["cores"] >= 1
        rec, _ = bench_remote(client, bundles[BUNDLE], None, {"iterations": 3, "warmup": 0, "max_images": 8},
                              echo=lambda _: None)
        assert rec["device"] == "board-y" and rec["data"]["n"] == 8
        client.bye()
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        client.close()
        port.close()
        relay.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "HEAVY []" in err
    stopped = [ln for ln in err.splitlines() if "stopped" in ln]
    assert stopped == ["edgecxr agent: stopped; 1 session(s), 3 request(s), 1 file(s) received"], err
    assert (tmp_path / "store" / "bundles" / BUNDLE / MANIFEST).is_file()


def test_bad_requests_are_one_line_errors(board) -> None:
    rig = board(data=None)
    with pytest.raises(RemoteError, match=r"bench: no bundle 'nope' on this board \(installed: none\)"):
        rig.client.request("bench", {"bundle": "nope"})
    with pytest.raises(RemoteError, match="invalid file name"):
        rig.client.request("predict", {"bundle": "../etc", "images": ["x.png"]})
    with pytest.raises(RemoteError, match="params.iterations must be an integer >= 1"):
        rig.client.request("bench", {"bundle": "x", "iterations": 0})
    bad = rig.store.parent / "x.tar"
    with tarfile.open(bad, "w") as tar:
        tar.add(MINI / "NORMAL", arcname="../escape")
    with pytest.raises(RemoteError, match="unexpected entry in image archive"):
        rig.client.push(bad, meta={"kind": "images"})
    assert not (rig.store / "escape").exists() and not (rig.store / "images" / "x").exists()
    assert rig.client.request("bundles") == {"bundles": []}
