from __future__ import annotations

import os
import time

from .cable import PtyPort
from .faults import FaultConfig, FaultRelay


def read_exactly(port: PtyPort, n: int, timeout: float = 5.0) -> bytes:
    buf = bytearray()
    end = time.monotonic() + timeout
    while len(buf) < n and time.monotonic() < end:
        buf += port.read(n - len(buf))
    return bytes(buf)


def test_relay_paces_bytes_to_the_line_rate() -> None:
    baud, n = 921600, 23_040  # 0.25 s of line time at 8N1
    with FaultRelay.pty(FaultConfig(baud=baud)) as relay:
        a, b = relay.open_a(), relay.open_b()
        data = os.urandom(n)
        t0 = time.monotonic()
        a.write(data)
        got = read_exactly(b, n)
        elapsed = time.monotonic() - t0
        a.close()
        b.close()
    assert got == data
    assert n * 10 / baud * 0.97 <= elapsed <= n * 10 / baud + 0.25


def test_faults_depend_on_the_seed_not_on_read_sizes() -> None:
    cfg = FaultConfig(drop=2e-4, corrupt=5e-4, seed=3)
    data = os.urandom(200_000)
    r1 = FaultRelay(PtyPort.__new__(PtyPort), PtyPort.__new__(PtyPort), cfg)  # ports unused: no threads started
    r2 = FaultRelay(PtyPort.__new__(PtyPort), PtyPort.__new__(PtyPort), cfg)
    whole = r1.ab._mangle(data)
    pieces = b"".join(r2.ab._mangle(data[i:i + 37]) for i in range(0, len(data), 37))
    assert whole == pieces
    st = r1.ab.stats
    assert 50 <= st.flips <= 150  # expected 100
    assert 20 <= st.dropouts <= 60  # expected 40
    assert len(whole) == len(data) - st.dropped
    other = FaultRelay(PtyPort.__new__(PtyPort), PtyPort.__new__(PtyPort), FaultConfig(drop=2e-4, corrupt=5e-4, seed=4))
    assert other.ab._mangle(data) != whole


def test_cut_discards_then_restore_forwards() -> None:
    with FaultRelay.pty() as relay:
        a, b = relay.open_a(), relay.open_b()
        relay.cut(0.3)
        a.write(b"lost" * 10)
        time.sleep(0.1)
        assert b.read(100) == b""
        time.sleep(0.3)
        assert not relay.is_cut
        b.write(b"back")
        assert read_exactly(a, 4) == b"back"
        assert relay.stats["a->b"].cut_bytes == 40
        a.close()
        b.close()
