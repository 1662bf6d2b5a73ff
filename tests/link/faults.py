"""A fault-injecting relay between two byte streams, for tests and benchmarks.

``FaultRelay(a, b, FaultConfig(...))`` forwards bytes a->b and b->a in two threads and,
per direction, drops spans of bytes, flips bits, holds chunks back, and optionally paces
the bytes to a line rate (a pty moves bytes instantly; a UART at ``baud`` with 8N1
framing needs 10 bit times per byte).  ``cut()`` discards everything for a while
(a pulled cable).  ``FaultRelay.pty()`` builds the usual test rig: two pty pairs, the
relay between their masters, and two device paths (``a_path``, ``b_path``) that look
like two ends of a serial cable.

Faults are drawn from a seeded RNG per direction, per *byte position* of the stream
(drop and corrupt) so the fault pattern does not depend on how reads were chunked.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from edgecxr.device.link.transport import BytePort

from .cable import PtyPort

MAX_CATCHUP_S = 0.02
"""Pacing: while the line is busy (the previous read filled a whole chunk, so bytes were waiting) a relay
thread that woke up late may catch up on at most this much line time, as a UART never idles with a backlog.
After an idle gap the schedule restarts at the current time: the emulated line is never faster than baud."""

_NEVER = 1 << 62


@dataclass
class FaultConfig:
    drop: float = 0.0  # per byte: probability that a dropout starts at this byte
    drop_span: int = 16  # a dropout removes 1..drop_span bytes
    corrupt: float = 0.0  # per byte: probability of one flipped bit
    delay: float = 0.0  # per forwarded chunk: probability of holding it back
    delay_s: float = 0.05  # hold-back time, uniform in 0..delay_s (order is kept, like a real line)
    baud: int | None = None  # emulate this line rate (10 bits per byte); None = as fast as possible
    chunk: int = 256  # bytes forwarded per read at most
    seed: int = 0

    @staticmethod
    def per_byte_for_frames(fraction: float, frame_bytes: int) -> float:
        """Per-byte probability that damages ``fraction`` of frames of ``frame_bytes`` bytes."""
        if fraction <= 0:
            return 0.0
        return 1.0 - (1.0 - fraction) ** (1.0 / frame_bytes)


@dataclass
class RelayStats:
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: int = 0
    dropouts: int = 0
    flips: int = 0
    delays: int = 0
    cut_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _gap(rng: random.Random, p: float) -> int:
    """Bytes until the next event of per-byte probability ``p`` (geometric)."""
    if p <= 0:
        return _NEVER
    if p >= 1:
        return 0
    return int(math.log(1.0 - rng.random()) / math.log1p(-p))


class _Pipe:
    def __init__(self, relay: FaultRelay, src: BytePort, dst: BytePort, config: FaultConfig, seed: int, name: str):
        self.relay = relay
        self.src = src
        self.dst = dst
        self.config = config
        self.rng = random.Random(seed)  # delays
        self._rng_flip = random.Random(seed * 7919 + 1)
        self._rng_drop = random.Random(seed * 7919 + 2)
        self.name = name
        self.stats = RelayStats()
        self._pos = 0  # stream offset of the next byte
        self._flip_at = _gap(self._rng_flip, config.corrupt)
        self._drop_at = _gap(self._rng_drop, config.drop)
        self._drop_end = 0
        self._t_next = 0.0
        self._backlog = False
        self.thread = threading.Thread(target=self._run, name=f"fault-relay {name}", daemon=True)

    def _run(self) -> None:
        cfg = self.config
        while self.relay.running:
            try:
                data = self.src.read(cfg.chunk)
            except (OSError, ValueError):
                if not self.relay.running:
                    return
                time.sleep(0.01)
                continue
            if not data:
                continue
            st = self.stats
            st.bytes_in += len(data)
            if self.relay.is_cut:
                st.cut_bytes += len(data)
                continue
            wire = len(data)
            data = self._mangle(data)
            if cfg.delay > 0 and self.rng.random() < cfg.delay:
                st.delays += 1
                time.sleep(self.rng.uniform(0.0, cfg.delay_s))
            if cfg.baud:
                now = time.monotonic()
                # Busy line (the previous read left bytes waiting): keep the schedule, so a late wake-up is
                # made up; idle line: this chunk starts now.
                start = max(self._t_next, now - MAX_CATCHUP_S) if self._backlog else max(self._t_next, now)
                self._t_next = start + wire * 10.0 / cfg.baud
                if self._t_next > now:
                    time.sleep(self._t_next - now)
            self._backlog = wire >= cfg.chunk
            if self.relay.is_cut:
                st.cut_bytes += len(data)
                continue
            if not data:
                continue
            try:
                self.dst.write(data)
            except (OSError, ValueError):
                if not self.relay.running:
                    return
                continue
            st.bytes_out += len(data)

    def _mangle(self, data: bytes) -> bytes:
        """Apply the flips and dropouts that fall in this chunk (positions are stream offsets)."""
        cfg = self.config
        base, n = self._pos, len(data)
        end = base + n
        self._pos = end
        if self._flip_at >= end and self._drop_at >= end and self._drop_end <= base:
            return data
        buf = bytearray(data)
        while self._flip_at < end:
            buf[self._flip_at - base] ^= 1 << self._rng_flip.randrange(8)
            self.stats.flips += 1
            self._flip_at += 1 + _gap(self._rng_flip, cfg.corrupt)
        kept = bytearray()
        cur = base
        while True:
            if self._drop_end > cur:  # inside a dropout (possibly begun in an earlier chunk)
                stop = min(self._drop_end, end)
                self.stats.dropped += stop - cur
                cur = stop
                if cur >= end:
                    break
            if self._drop_at >= end:
                kept += buf[cur - base:]
                break
            kept += buf[cur - base:self._drop_at - base]
            cur = self._drop_at
            self._drop_end = cur + self._rng_drop.randint(1, max(1, cfg.drop_span))
            self.stats.dropouts += 1
            self._drop_at = self._drop_end + _gap(self._rng_drop, cfg.drop)
        return bytes(kept)


class FaultRelay:
    """Forwards bytes between ``a`` and ``b`` with injected faults.  ``config_ba`` defaults to ``config``."""

    def __init__(self, a: BytePort, b: BytePort, config: FaultConfig | None = None,
                 config_ba: FaultConfig | None = None):
        self.a = a
        self.b = b
        self.config = config or FaultConfig()
        self.config_ba = config_ba or self.config
        self.running = False
        self._cut_until = 0.0
        self._owned: list[Any] = []
        self._slave_fds: list[int] = []
        self.a_path: str | None = None
        self.b_path: str | None = None
        seed = self.config.seed
        self.ab = _Pipe(self, a, b, self.config, seed * 2 + 1, "a->b")
        self.ba = _Pipe(self, b, a, self.config_ba, seed * 2 + 2, "b->a")

    @classmethod
    def pty(cls, config: FaultConfig | None = None, config_ba: FaultConfig | None = None) -> FaultRelay:
        """Two pty pairs with the relay between their masters; open the ends with ``open_a()`` / ``open_b()``."""
        import termios
        import tty

        ports, slaves = [], []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave, termios.TCSANOW)
            slaves.append(slave)
            ports.append(PtyPort(master, timeout=0.02, raw=False, own_fd=True))
        relay = cls(ports[0], ports[1], config, config_ba)
        relay._owned = ports
        relay._slave_fds = slaves  # held open so the masters never see EIO between users
        relay.a_path, relay.b_path = os.ttyname(slaves[0]), os.ttyname(slaves[1])
        return relay

    def open_a(self, timeout: float = 0.05) -> PtyPort:
        if self.a_path is None:
            raise RuntimeError("not a pty relay")
        return PtyPort(self.a_path, timeout=timeout)

    def open_b(self, timeout: float = 0.05) -> PtyPort:
        if self.b_path is None:
            raise RuntimeError("not a pty relay")
        return PtyPort(self.b_path, timeout=timeout)

    # ------------------------------------------------------------------ control
    def start(self) -> FaultRelay:
        if not self.running:
            self.running = True
            self.ab.thread.start()
            self.ba.thread.start()
        return self

    def close(self) -> None:
        self.running = False
        for pipe in (self.ab, self.ba):
            if pipe.thread.is_alive():
                pipe.thread.join(timeout=2.0)
        for port in self._owned:
            port.close()
        for fd in self._slave_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned, self._slave_fds = [], []

    def __enter__(self) -> FaultRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self, seconds: float | None = None) -> None:
        """Discard all bytes in both directions for ``seconds`` (None: until :meth:`restore`)."""
        self._cut_until = math.inf if seconds is None else time.monotonic() + seconds

    def restore(self) -> None:
        self._cut_until = 0.0

    @property
    def is_cut(self) -> bool:
        return time.monotonic() < self._cut_until

    @property
    def stats(self) -> dict[str, RelayStats]:
        return {"a->b": self.ab.stats, "b->a": self.ba.stats}
