from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator

import pytest

from edgecxr.device.link import LinkConfig, LinkError, ProtocolMismatch, Transport
from edgecxr.device.link.framing import FrameType, encode_frame
from edgecxr.shared.errors import EdgeCXRError

from .cable import PtyPort, pty_pair
from .faults import FaultConfig, FaultRelay

FAST = LinkConfig(ack_timeout=0.25, max_retries=4)  # a silent peer is detected in (4 + 1) * 0.25 s


@pytest.fixture
def pair() -> Iterator[tuple[PtyPort, PtyPort]]:
    a, b = pty_pair()
    yield a, b
    a.close()
    b.close()


def connect(a: PtyPort, b: PtyPort, config: LinkConfig = FAST) -> tuple[Transport, Transport]:
    agent = Transport(a, config, role="agent").start()
    host = Transport(b, config, role="host").start()
    host.hello()
    hello = agent.recv(timeout=2)
    assert hello is not None and hello.type == FrameType.HELLO  # the agent is told a session began
    return agent, host


def test_link_error_is_a_user_facing_error() -> None:
    assert issubclass(LinkError, EdgeCXRError)
    assert issubclass(ProtocolMismatch, LinkError)


def test_ordered_messages_both_ways_and_a_fragmented_large_message(pair: tuple[PtyPort, PtyPort]) -> None:
    agent, host = connect(*pair)
    try:
        big = os.urandom(200_000)  # > max_payload: split into frames and put back together

        def agent_side() -> None:
            for i in range(50):
                agent.send_json(FrameType.PROGRESS, {"i": i})
            agent.send(FrameType.RESPONSE, big)

        t = threading.Thread(target=agent_side)
        t.start()
        for i in range(20):
            host.send_json(FrameType.REQUEST, {"n": i})
        got = [host.recv(timeout=5, liveness=True) for _ in range(51)]
        t.join()
        assert [m.json()["i"] for m in got[:50]] == list(range(50))  # type: ignore[union-attr]
        assert got[50] is not None and got[50].type == FrameType.RESPONSE and got[50].payload == big
        reqs = [agent.recv(timeout=5) for _ in range(20)]
        assert [json.loads(m.payload)["n"] for m in reqs] == list(range(20))  # type: ignore[union-attr]
        host.flush(timeout=5)
        assert host.stats.retransmits == 0 and agent.stats.duplicates == 0
    finally:
        host.close()
        agent.close()


def test_protocol_version_mismatch_is_refused_with_a_clear_message(pair: tuple[PtyPort, PtyPort]) -> None:
    a, b = pair
    agent = Transport(a, FAST, role="agent").start()
    old_host = Transport(b, LinkConfig(ack_timeout=0.25, max_retries=4, protocol_version=99,
                                       tool_version="edgecxr 9.9.9"), role="host").start()
    try:
        t0 = time.monotonic()
        with pytest.raises(ProtocolMismatch) as err:
            old_host.hello()
        assert time.monotonic() - t0 < 1.0  # refused at once, not timed out
        msg = str(err.value)
        assert "protocol version mismatch" in msg
        assert "speaks protocol 1 (edgecxr 0.1.0)" in msg and "protocol 99 (edgecxr 9.9.9)" in msg
        assert "\n" not in msg
        assert agent.last_refusal == msg
        assert not agent.connected and not old_host.connected
    finally:
        old_host.close()
        agent.close()


def test_two_hosts_refuse_each_other(pair: tuple[PtyPort, PtyPort]) -> None:
    a, b = pair
    h1, h2 = Transport(a, FAST, role="host").start(), Transport(b, FAST, role="host").start()
    try:
        with pytest.raises(ProtocolMismatch, match="both ends of the link say they are the host"):
            h2.hello()
    finally:
        h1.close()
        h2.close()


def test_silent_peer_gives_link_error_within_the_configured_timeout(pair: tuple[PtyPort, PtyPort]) -> None:
    _, b = pair  # nobody reads the other end
    cfg = LinkConfig(ack_timeout=0.2, max_retries=3)
    host = Transport(b, cfg, role="host")
    try:
        t0 = time.monotonic()
        with pytest.raises(LinkError, match="no answer .* after 4 HELLO attempts"):
            host.hello()
        elapsed = time.monotonic() - t0
        assert 0.75 <= elapsed <= (cfg.max_retries + 1) * cfg.ack_timeout + 0.4
    finally:
        host.close()


def test_peer_going_silent_mid_session_fails_sends_and_waits(tmp_path: object) -> None:
    relay = FaultRelay.pty(FaultConfig()).start()
    pa, pb = relay.open_a(), relay.open_b()
    agent, host = connect(pa, pb)
    try:
        host.send_json(FrameType.REQUEST, {"x": 1})
        host.flush(timeout=2)
        relay.cut()  # cable pulled
        # A message that is never acknowledged: the writer gives up after max_retries retransmissions.
        t0 = time.monotonic()
        host.send_json(FrameType.REQUEST, {"x": 2})
        with pytest.raises(LinkError, match="stopped answering"):
            host.flush()
        elapsed = time.monotonic() - t0
        bound = (FAST.max_retries + 1) * FAST.ack_timeout
        assert bound * 0.8 <= elapsed <= bound + 0.5
        assert host.stats.retransmits == FAST.max_retries
        # Every later call fails the same way until a new hello().
        with pytest.raises(LinkError):
            host.send_json(FrameType.REQUEST, {"x": 3})
        relay.restore()
        host.hello()
        host.send_json(FrameType.REQUEST, {"x": 4})
        host.flush(timeout=2)
    finally:
        host.close()
        agent.close()
        relay.close()
        pa.close()
        pb.close()


def test_waiting_for_a_reply_probes_the_peer(pair: tuple[PtyPort, PtyPort]) -> None:
    relay = FaultRelay.pty(FaultConfig()).start()
    pa, pb = relay.open_a(), relay.open_b()
    agent, host = connect(pa, pb, LinkConfig(ack_timeout=0.1, max_retries=3))
    try:
        assert host.dead_after == pytest.approx(0.4)
        # A busy but alive peer: nothing for 3x dead_after, yet its reader answers the probes.
        t0 = time.monotonic()
        assert host.recv(timeout=3 * host.dead_after, liveness=True) is None
        assert time.monotonic() - t0 >= 3 * host.dead_after - 0.05
        assert host.stats.probes_sent >= 3
        relay.cut()
        t0 = time.monotonic()
        with pytest.raises(LinkError, match="stopped answering: nothing received"):
            host.recv(timeout=30, liveness=True)
        assert time.monotonic() - t0 <= host.dead_after + 0.5
    finally:
        host.close()
        agent.close()
        relay.close()
        pa.close()
        pb.close()


def test_peer_without_session_is_reported(pair: tuple[PtyPort, PtyPort]) -> None:
    agent, host = connect(*pair)
    try:
        agent.end_session()  # as if the agent restarted
        t0 = time.monotonic()
        host.send_json(FrameType.REQUEST, {"x": 1})
        with pytest.raises(LinkError, match="has no session with us"):
            host.flush(timeout=5)
        assert time.monotonic() - t0 < 1.0
    finally:
        host.close()
        agent.close()


def test_duplicate_hello_keeps_the_session_and_foreign_frames_are_ignored(pair: tuple[PtyPort, PtyPort]) -> None:
    a, b = pair
    agent, host = connect(a, b)
    try:
        nonce = agent.session_id
        assert nonce == host.session_id and nonce is not None
        host.send_json(FrameType.REQUEST, {"x": 1})
        host.flush(timeout=2)
        # Frames of another protocol version and of an unknown type are dropped, not delivered.
        b.write(encode_frame(FrameType.REQUEST, b'{"x": 99}', seq=12345, version=7))
        b.write(encode_frame(200, b"?", seq=1))
        host.send_json(FrameType.REQUEST, {"x": 2})
        got = [agent.recv(timeout=2) for _ in range(2)]
        assert [m.json()["x"] for m in got] == [1, 2]  # type: ignore[union-attr]
        assert agent.recv(timeout=0.3) is None
        assert agent.stats.foreign >= 2
        assert agent.session_id == nonce
    finally:
        host.close()
        agent.close()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        LinkConfig(ack_timeout=0)
    with pytest.raises(ValueError):
        LinkConfig(window=0)
    with pytest.raises(ValueError):
        LinkConfig(chunk_size=70_000)
    assert LinkConfig().fragment_size == 4096 + 64
