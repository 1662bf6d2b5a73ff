"""End to end: a real Agent thread and a real RemoteClient over ptys, through the fault relay."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecxr.device.link import (
    Agent,
    LinkConfig,
    LinkError,
    ProtocolMismatch,
    RemoteClient,
    RemoteError,
    open_port,
)

from .faults import FaultConfig

FAST = LinkConfig(ack_timeout=0.25, max_retries=4)
NOISY = FaultConfig(drop=1e-5, drop_span=24, corrupt=3e-5, delay=0.02, delay_s=0.02, seed=11)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_arrives_intact_through_a_noisy_line(make_rig: Callable[..., Any]) -> None:
    rig = make_rig(faults=NOISY)
    src = rig.tmp / "bundle.tar"
    src.write_bytes(os.urandom(200_000))
    seen: list[int] = []
    res = rig.client.push(src, on_progress=lambda pos, size: seen.append(pos))
    installed = rig.store / "bundle.tar"
    assert installed.read_bytes() == src.read_bytes()
    assert res.sha256 == sha(src) == res.result["sha256"]
    assert res.result["installed"] == "bundle.tar"
    assert res.resumed_from == 0 and res.bytes_sent == 200_000
    assert seen[-1] == 200_000 and seen == sorted(seen)
    # The line really was noisy and the link really recovered.
    ab, ba = rig.relay.stats["a->b"], rig.relay.stats["b->a"]
    assert ab.flips + ba.flips > 0 and ab.dropouts + ba.dropouts > 0 and ab.delays + ba.delays > 0
    assert rig.agent.transport.decoder.stats.damaged > 0
    assert rig.client.transport.stats.retransmits > 0
    assert not list((rig.store / "incoming").glob("*.tar"))
    assert not list((rig.store / "incoming" / ".partial").iterdir())  # staging cleaned up


def test_cut_transfer_resumes_where_it_stopped(make_rig: Callable[..., Any]) -> None:
    rig = make_rig()
    src = rig.tmp / "big.bin"
    size = 400_000
    src.write_bytes(os.urandom(size))

    def cut_halfway(pos: int, total: int) -> None:
        if pos >= total // 2 and not rig.relay.is_cut:
            rig.relay.cut()  # cable pulled in the middle

    t0 = time.monotonic()
    with pytest.raises(LinkError, match="stopped answering"):
        rig.client.push(src, on_progress=cut_halfway)
    assert time.monotonic() - t0 < 10
    assert not (rig.store / "big.bin").exists() and not (rig.store / "incoming" / "big.bin").exists()
    rig.relay.restore()

    res = rig.client.push(src)  # reconnects (new HELLO) and asks the agent where it stopped
    assert res.resumed_from >= size // 2 - 8 * 4096  # at most one window behind where the cut happened
    assert res.resumed_from < size
    assert res.bytes_sent == size - res.resumed_from < size
    assert res.result["resumed_from"] == res.resumed_from
    assert (rig.store / "big.bin").read_bytes() == src.read_bytes()
    assert rig.agent.sessions == 2


def test_resume_after_the_host_process_died(make_rig: Callable[..., Any]) -> None:
    rig = make_rig()
    src = rig.tmp / "model.tflite"
    src.write_bytes(os.urandom(150_000))

    class HostDied(Exception):
        pass

    def die(pos: int, total: int) -> None:
        if pos >= 100_000:
            raise HostDied

    with pytest.raises(HostDied):
        rig.client.push(src, on_progress=die)
    rig.client.close()  # the process is gone; a new one opens the port
    client = rig.new_client()
    res = client.push(src)
    assert 0 < res.resumed_from <= 100_000 and res.bytes_sent == 150_000 - res.resumed_from
    assert sha(rig.store / "model.tflite") == sha(src)


def test_bench_handler_returns_a_record_with_progress(make_rig: Callable[..., Any]) -> None:
    calls: list[dict] = []

    def bench(params: dict, progress: Callable[[dict], None]) -> dict:
        calls.append(params)
        for i in range(params["runs"]):
            progress({"done": i + 1, "of": params["runs"]})
            time.sleep(0.12)  # slower than the agent's progress rate limit
        return {"target": params["target"], "runs": params["runs"], "latency_ms": {"p50": 12.5, "p90": 14.0}}

    rig = make_rig(faults=NOISY, handlers={"bench": bench})
    progress: list[dict] = []
    rec = rig.client.request("bench", {"target": "rpi5", "runs": 4}, on_progress=progress.append)
    assert rec == {"target": "rpi5", "runs": 4, "latency_ms": {"p50": 12.5, "p90": 14.0}}
    assert calls == [{"target": "rpi5", "runs": 4}]
    assert [p["done"] for p in progress] == [1, 2, 3, 4]
    assert all(p["op"] == "bench" and p["of"] == 4 for p in progress)


def test_handler_errors_become_one_line_and_the_agent_keeps_serving(make_rig: Callable[..., Any]) -> None:
    def broken(params: dict, progress: Callable[[dict], None]) -> dict:
        raise ValueError("bad input\nsecond line")

    rig = make_rig(handlers={"predict": broken, "nonjson": lambda p, cb: {"x": object()}})
    with pytest.raises(RemoteError) as err:
        rig.client.request("predict", {"image": "x.png"})
    assert str(err.value) == "predict: ValueError: bad input second line"
    with pytest.raises(RemoteError, match=r"unknown op 'nope' \(this agent has: get, info, list, nonjson, ping"):
        rig.client.request("nope")
    with pytest.raises(RemoteError, match="nonjson: "):
        rig.client.request("nonjson")
    assert rig.client.request("ping", {})["pong"] is True
    assert rig.agent.error is None


def test_info_and_list(make_rig: Callable[..., Any]) -> None:
    rig = make_rig(handlers={"bench": lambda p, cb: {}})
    info = rig.client.info()
    assert info["hostname"] == socket.gethostname()
    assert info["cpu_count"] == os.cpu_count()
    assert {"platform", "machine", "python", "edgecxr", "protocol", "ops"} <= set(info)
    assert "bench" in info["ops"] and "put" in info["ops"]
    assert rig.client.list() == []
    src = rig.tmp / "a.bin"
    src.write_bytes(b"x" * 1234)
    rig.client.push(src)
    assert [(f["name"], f["size"]) for f in rig.client.list()] == [("a.bin", 1234)]


def test_on_file_received_can_reject_or_install(make_rig: Callable[..., Any]) -> None:
    seen: list[tuple[Path, dict]] = []

    def hook(path: Path, meta: dict) -> dict:
        seen.append((path, meta))
        assert path.parent.name == "incoming" and path.read_bytes()  # complete and verified
        if meta["meta"].get("target") != "rpi5":
            raise ValueError("bundle is for another target")
        dest = path.parent.parent / "bundles" / path.name
        dest.parent.mkdir(exist_ok=True)
        path.rename(dest)
        return {"installed": f"bundles/{path.name}", "target": "rpi5"}

    rig = make_rig(on_file_received=hook)
    src = rig.tmp / "b.tar"
    src.write_bytes(os.urandom(20_000))
    with pytest.raises(RemoteError, match="rejected b.tar: ValueError: bundle is for another target"):
        rig.client.push(src, meta={"target": "jetson"})
    assert [p.name for p in rig.store.rglob("b.tar")] == []  # rejected: not installed, not left behind
    res = rig.client.push(src, meta={"target": "rpi5"})
    assert res.result["installed"] == "bundles/b.tar" and res.result["target"] == "rpi5"
    assert (rig.store / "bundles" / "b.tar").read_bytes() == src.read_bytes()
    assert seen[1][1] == {"name": "b.tar", "size": 20_000, "sha256": sha(src), "meta": {"target": "rpi5"}}


def test_pull_a_result_back(make_rig: Callable[..., Any]) -> None:
    rig = make_rig(faults=NOISY)
    rig.store.mkdir(parents=True, exist_ok=True)
    (rig.store / "results.jsonl").write_bytes(os.urandom(60_000))
    got = rig.client.pull("results.jsonl", rig.tmp / "back")
    assert got.read_bytes() == (rig.store / "results.jsonl").read_bytes()
    with pytest.raises(RemoteError, match="outside the store"):
        rig.client.pull("../etc/passwd", rig.tmp / "back")
    with pytest.raises(RemoteError, match="no file 'nope'"):
        rig.client.pull("nope", rig.tmp / "back")


def test_mismatched_client_is_refused_and_the_agent_stays_up(make_rig: Callable[..., Any]) -> None:
    rig = make_rig(client_config=LinkConfig(ack_timeout=0.25, max_retries=4, protocol_version=2))
    with pytest.raises(ProtocolMismatch, match="this agent speaks protocol 1 .* the host speaks protocol 2"):
        rig.client.hello()
    rig.client.close()
    assert rig.new_client().ping() < 1.0


def test_silent_agent_gives_link_error_within_the_configured_timeout(make_rig: Callable[..., Any]) -> None:
    rig = make_rig()
    rig.client.hello()
    rig.relay.cut()
    t0 = time.monotonic()
    with pytest.raises(LinkError, match="stopped answering"):
        rig.client.request("ping")
    assert time.monotonic() - t0 <= (FAST.max_retries + 1) * FAST.ack_timeout + 0.5


def test_long_handler_is_not_mistaken_for_a_dead_agent(make_rig: Callable[..., Any]) -> None:
    cfg = LinkConfig(ack_timeout=0.1, max_retries=2)  # dead after 0.3 s of silence
    rig = make_rig(config=cfg, handlers={"sleep": lambda p, cb: (time.sleep(p["s"]), {"slept": p["s"]})[1]})
    assert rig.client.request("sleep", {"s": 1.0}) == {"slept": 1.0}
    assert rig.client.transport.stats.probes_sent >= 3


def test_bye_shutdown_stops_the_agent(make_rig: Callable[..., Any]) -> None:
    rig = make_rig()
    rig.client.ping()
    rig.client.bye(shutdown=True)
    assert rig.agent._thread is not None
    rig.agent._thread.join(timeout=3)
    assert not rig.agent._thread.is_alive()


def test_open_port_urls() -> None:
    port = open_port("loop://", 921600, timeout=0.1)
    try:
        port.write(b"abc")
        assert port.read(3) == b"abc"
        assert port.baudrate == 921600
    finally:
        port.close()
    with pytest.raises(LinkError, match="cannot open /dev/does-not-exist"):
        open_port("/dev/does-not-exist")


class SocketPort:
    """The agent's end of a TCP connection, as a port (the host side uses pyserial's socket://)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.timeout, self.name = sock, 0.05, "tcp"

    def read(self, size: int = 1) -> bytes:
        if not select.select([self.sock], [], [], self.timeout)[0]:
            return b""
        return self.sock.recv(size)

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        return len(data)


def test_socket_url_end_to_end(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    accepted: list[socket.socket] = []
    t = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
    t.start()
    client = RemoteClient(url, config=FAST)  # opened with open_port
    t.join(timeout=5)
    agent = Agent(SocketPort(accepted[0]), tmp_path / "store", config=FAST)
    agent.start()
    try:
        src = tmp_path / "f.bin"
        src.write_bytes(os.urandom(50_000))
        assert client.push(src).result["sha256"] == sha(src)
        assert client.info()["protocol"] == 1
    finally:
        client.close()
        agent.stop()
        accepted[0].close()
        server.close()
