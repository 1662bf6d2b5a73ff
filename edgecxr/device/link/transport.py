"""A reliable, ordered message channel over any byte stream with ``read(n)``/``write(b)``/``timeout``.

Layering follows pyserial's ``serial.threaded``: :mod:`edgecxr.device.link.framing` cuts the
byte stream into frames (no I/O); :class:`Transport` owns the port and two threads:

* the reader feeds bytes to the decoder, answers ACK/NAK/HELLO at once and queues
  in-order messages for :meth:`Transport.recv`;
* the writer is the only thread that writes to the port: control frames first, then
  retransmissions that are due, then new data frames.

Reliability is a sliding window (default 8 frames) with cumulative ACKs carrying
selective acknowledgements, a NAK on a gap or a damaged frame (fast retransmit), and a
retransmission timer per frame (:mod:`edgecxr.device.link.window` keeps that state).  A frame that is still unacknowledged after
``max_retries`` retransmissions makes the link fail with one :class:`LinkError`.

Timing model: when the line rate is known (``LinkConfig.baud``, or ``port.baudrate`` of
a real serial port) the writer tracks when each frame will have left the wire, so a
frame queued behind 30 KiB at 115200 baud is not declared lost while it is still in
the UART's buffer.  Its ACK is then awaited for ``ack_timeout`` more seconds.

Handshake: the host sends HELLO (protocol version, role, tool version, a nonce and its
initial sequence number); the agent checks the version and role and answers HELLO_ACK
(accepted, or refused with a one-line reason; :mod:`edgecxr.device.link.session` decides).  Each HELLO starts a new session: both
sides drop what they had in flight, so a host that reconnects after a cut starts clean.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from edgecxr.device.link.config import LinkConfig, LinkStats
from edgecxr.device.link.errors import LinkError, ProtocolMismatch
from edgecxr.device.link.framing import (
    CONTROL_TYPES,
    FLAG_NO_SESSION,
    FLAG_PROBE,
    OVERHEAD,
    Decoder,
    Frame,
    FrameType,
    type_name,
)
from edgecxr.device.link.message import Message, dumps
from edgecxr.device.link.session import Handshake, HelloAnswer, Session
from edgecxr.device.link.window import NAK_GUARD_S, Entry, Window

__all__ = ["NAK_GUARD_S", "BytePort", "LinkConfig", "LinkStats", "Message", "Transport", "dumps", "port_name"]

log = logging.getLogger("edgecxr.device.link")


class BytePort(Protocol):
    """What the transport needs from a port (``serial.Serial`` and :class:`PtyPort` both fit)."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...


def port_name(port: Any) -> str:
    for attr in ("name", "port", "portstr"):
        value = getattr(port, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(port).__name__


def _port_baud(port: Any) -> int | None:
    """The real line rate of ``port``, or None where it means nothing (loop://, socket://, plain pty)."""
    if type(port).__module__.startswith("serial.urlhandler"):
        return None
    baud = getattr(port, "baudrate", None)
    return baud if isinstance(baud, int) and baud > 0 else None


def _in_waiting(port: Any) -> int:
    try:
        return int(getattr(port, "in_waiting", 0) or 0)
    except Exception:
        return 0


class Transport:
    """Reliable ordered messages over a byte port.  Thread-safe; one session at a time.

    It owns the port, the lock and the two threads; :class:`Handshake` (``session.py``) decides
    about sessions and :class:`Window` (``window.py``) keeps the frames in flight, both under the lock.
    """

    def __init__(self, port: BytePort, config: LinkConfig | None = None, *, role: str = "host",
                 info: dict[str, Any] | None = None):
        self.port = port
        self.config = config or LinkConfig()
        self.role = role
        self.info = dict(info or {})
        self.stats = LinkStats()
        self.decoder = Decoder(max_payload=self.config.max_payload)
        self.baud = self.config.baud or _port_baud(port)
        self._hs = Handshake(self.config, role, self.info)
        self._win = Window(self.config, self.stats)
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._failed: LinkError | None = None
        self._port_error = False
        self._closed = False
        self._started = False
        self._threads: list[threading.Thread] = []
        self._last_rx = 0.0
        self._last_probe = 0.0
        self._wire_free = 0.0
        self._no_session_nak_at = 0.0
        self._writer_wait: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Transport:
        with self._cond:
            if self._started:
                return self
            if self._closed:
                raise LinkError("link closed")
            self._started = True
        timeout = getattr(self.port, "timeout", None)
        if timeout is None or timeout > 0.5:
            try:
                self.port.timeout = self.config.poll_interval
            except Exception:  # a port that refuses: the reader then wakes only on data
                log.debug("could not set timeout on %s", port_name(self.port))
        name = port_name(self.port)
        for target, what in ((self._reader, "rx"), (self._writer, "tx")):
            t = threading.Thread(target=target, name=f"edgecxr-link-{what}:{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self, drain: float = 0.5) -> None:
        """Stop the threads (after up to ``drain`` seconds writing queued ACKs).  The port stays open."""
        end = time.monotonic() + drain
        with self._cond:
            while self._win.control_pending and self._started and not self._port_error:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.05))
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)

    def __enter__(self) -> Transport:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def last_refusal(self) -> str | None:
        """The reason we gave when we last refused a peer's HELLO, or None."""
        return self._hs.last_refusal

    @property
    def connected(self) -> bool:
        return self._hs.session is not None and self._failed is None and not self._closed

    @property
    def peer(self) -> dict[str, Any] | None:
        s = self._hs.session
        return dict(s.peer) if s is not None else None

    @property
    def session_id(self) -> int | None:
        """The nonce of the current session (changes on every HELLO), or None."""
        s = self._hs.session
        return s.nonce if s is not None else None

    @property
    def failed(self) -> bool:
        """True once the session failed (dead peer, port error) until the next HELLO / end_session()."""
        return self._failed is not None

    @property
    def port_error(self) -> bool:
        """True when the link failed because the port itself failed (unplugged, closed)."""
        return self._port_error

    @property
    def dead_after(self) -> float:
        """Seconds of silence after which a waiting :meth:`recv` with ``liveness`` gives up."""
        cfg = self.config
        return (cfg.max_retries + 1) * cfg.ack_timeout + self._wire_time(cfg.fragment_size + OVERHEAD)

    def _wire_time(self, nbytes: int) -> float:
        return nbytes * 10.0 / self.baud if self.baud else 0.0

    # ------------------------------------------------------------------ handshake
    def hello(self) -> dict[str, Any]:
        """Open a session with the peer; returns the peer's HELLO_ACK (proto, role, tool, info).

        Raises :class:`ProtocolMismatch` when the peer refuses us (or we refuse it), and
        :class:`LinkError` when nothing answers after ``max_retries + 1`` attempts.
        """
        self.start()
        cfg = self.config
        frame, wait = self._hs.hello_frame()
        attempts = cfg.max_retries + 1
        per_try = cfg.ack_timeout + self._wire_time(len(frame) + 1024)
        t0 = time.monotonic()
        with self._cond:
            self._check_open_locked()
            self._reset_locked()
            self._hs.wait = wait
            try:
                for _ in range(attempts):
                    self._win.ctrl.append(frame)
                    self._cond.notify_all()
                    end = time.monotonic() + per_try
                    while wait.reply is None and not self._closed and not self._port_error:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if wait.reply is not None or self._closed or self._port_error:
                        break
            finally:
                self._hs.wait = None
            self._check_open_locked()
            if wait.reply is None and self._port_error and self._failed is not None:
                raise self._failed
        reply = wait.reply
        if reply is None:
            raise LinkError(f"no answer on {port_name(self.port)} after {attempts} HELLO attempts in "
                            f"{time.monotonic() - t0:.1f}s: is `edgecxr agent` running on the board, "
                            "on this cable, at the same baud rate?")
        if not reply.get("accepted"):
            raise ProtocolMismatch(str(reply.get("error") or "the peer refused the handshake"))
        log.info("link up with %s %s (%s)", reply.get("role"), reply.get("tool"), port_name(self.port))
        return reply

    def end_session(self) -> None:
        """Forget the current session (after BYE); frames of it that still arrive are ignored."""
        with self._cond:
            self._reset_locked()

    def _reset_locked(self) -> None:
        self._hs.session = None
        self._win.clear()
        if not self._port_error:
            self._failed = None
        self._cond.notify_all()

    def _open_session_locked(self, session: Session) -> None:
        self._reset_locked()
        self._hs.session = session
        self._win.start(session.seq0, session.peer_seq0)

    def _on_hello(self, f: Frame) -> None:
        answer: HelloAnswer | None = self._hs.answer_hello(f)
        if answer is None:
            return  # we are opening a session ourselves
        if answer.repeat:
            self._win.ctrl.append(answer.frame)  # our HELLO_ACK was lost: say it again, keep the session
            return
        if answer.session is not None:
            self._open_session_locked(answer.session)
            self._win.inbox.append(Message(FrameType.HELLO, f.payload))
        self._win.ctrl.append(answer.frame)
        self._cond.notify_all()

    def _on_hello_ack(self, f: Frame) -> None:
        wait = self._hs.wait
        if wait is None or f.seq != wait.nonce or wait.reply is not None:
            return
        session = self._hs.check_hello_ack(f)
        if session is not None:
            self._open_session_locked(session)
        self._cond.notify_all()

    # ------------------------------------------------------------------ sending
    def send(self, ftype: int, payload: bytes = b"") -> None:
        """Queue one message; blocks while the window is full.  Delivery is confirmed by :meth:`flush`."""
        if ftype in CONTROL_TYPES:
            raise ValueError(f"{type_name(ftype)} is a control frame, not a message")
        payload = bytes(payload)
        if len(payload) > self.config.max_message:
            raise LinkError(f"message of {len(payload)} bytes exceeds max_message={self.config.max_message}")
        with self._send_lock:
            with self._cond:
                session = self._require_session_locked()
            size = session.fragment_size
            parts = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
            last = len(parts) - 1
            for i, part in enumerate(parts):
                with self._cond:
                    while True:
                        if self._require_session_locked() is not session:
                            raise LinkError("the peer started a new session; message dropped")
                        if len(self._win.unacked) < session.window:
                            break
                        self._cond.wait(0.5)
                    self._win.push(ftype, part, more=i < last)
                    self._cond.notify_all()
            with self._cond:
                self.stats.messages_sent += 1

    def send_json(self, ftype: int, obj: dict[str, Any]) -> None:
        self.send(ftype, dumps(obj))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far is acknowledged by the peer."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._require_session_locked()  # raises the failure that emptied the window, if any
                if not self._win.unacked:
                    return
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise LinkError(f"the peer did not acknowledge {len(self._win.unacked)} frame(s) within {timeout}s")
                self._cond.wait(0.5 if left is None else min(left, 0.5))

    def _check_open_locked(self) -> None:
        if self._closed:
            raise LinkError(f"link on {port_name(self.port)} is closed")

    def _require_session_locked(self) -> Session:
        self._check_open_locked()
        if self._failed is not None:
            raise self._failed
        if self._hs.session is None:
            raise LinkError("not connected: no session with the peer (call hello() first)")
        return self._hs.session

    def _fail_locked(self, message: str, port_error: bool = False) -> None:
        if self._failed is None:
            log.warning("link failed: %s", message)
            self._failed = LinkError(message)
        if port_error:
            self._port_error = True
        self._win.drop_sends()
        self._cond.notify_all()

    # ------------------------------------------------------------------ receiving
    def recv(self, timeout: float | None = None, *, liveness: bool = False) -> Message | None:
        """Next message, or None after ``timeout`` seconds.

        With ``liveness`` the peer is probed when it has been silent for ``ack_timeout``
        and the link fails with :class:`LinkError` after :attr:`dead_after` seconds of
        silence (a busy agent still answers probes: its reader thread is independent).
        """
        cfg = self.config
        start = time.monotonic()
        end = None if timeout is None else start + timeout
        with self._cond:
            while True:
                if self._win.inbox:
                    return self._win.inbox.popleft()
                self._check_open_locked()
                if self._failed is not None:
                    raise self._failed
                now = time.monotonic()
                if end is not None and now >= end:
                    return None
                wait = None if end is None else end - now
                if liveness:
                    if self._hs.session is None:
                        raise LinkError("not connected: no session with the peer (call hello() first)")
                    silent = now - max(self._last_rx, start)
                    if silent >= self.dead_after:
                        self._fail_locked(f"the peer on {port_name(self.port)} stopped answering: nothing received "
                                          f"for {silent:.1f}s (probed every {cfg.ack_timeout:g}s)")
                        raise self._failed  # type: ignore[misc]
                    if silent >= cfg.ack_timeout and now - self._last_probe >= cfg.ack_timeout:
                        self._last_probe = now
                        self.stats.probes_sent += 1
                        self._queue_ack_locked(probe=True)
                    step = cfg.ack_timeout / 4
                    wait = step if wait is None else min(wait, step)
                self._cond.wait(wait)

    def poll(self) -> Message | None:
        """A message if one is waiting, else None (never blocks)."""
        with self._cond:
            if self._win.inbox:
                return self._win.inbox.popleft()
            if self._failed is not None:
                raise self._failed
            return None

    # ------------------------------------------------------------------ reader thread
    def _reader(self) -> None:
        cfg = self.config
        stale_after = max(0.1, cfg.ack_timeout / 2)
        last_data = time.monotonic()
        while not self._closed:
            try:
                data = self.port.read(min(max(_in_waiting(self.port), 1), 65536))
            except Exception as exc:
                if self._closed:
                    return
                with self._cond:
                    self._fail_locked(f"reading {port_name(self.port)} failed: {exc}", port_error=True)
                time.sleep(0.2)
                continue
            now = time.monotonic()
            damaged0 = self.decoder.stats.damaged
            if data:
                last_data = now
                frames = self.decoder.feed(data)
            elif self.decoder.pending and now - last_data > stale_after:
                last_data = now
                frames = self.decoder.flush_stale()
            else:
                continue
            damaged = self.decoder.stats.damaged - damaged0
            with self._cond:
                if data:
                    self._last_rx = now
                    self.stats.bytes_read += len(data)
                self._handle_locked(frames, damaged)

    def _handle_locked(self, frames: list[Frame], damaged: int) -> None:
        version = self.config.protocol_version
        need_ack = False
        for f in frames:
            self.stats.frames_received += 1
            t = f.type
            if t == FrameType.HELLO:
                self._on_hello(f)
            elif t == FrameType.HELLO_ACK:
                self._on_hello_ack(f)
            elif f.version != version:
                self.stats.foreign += 1
            elif t == FrameType.ACK:
                self._on_ack(f)
            elif t == FrameType.NAK:
                self._on_nak(f)
            elif t in _DATA_TYPES:
                need_ack |= self._on_data(f)
            else:
                self.stats.foreign += 1
        if self._hs.session is not None:
            if damaged:  # most likely the frame we expect next: ask for it now, and NAK the next gap again
                self._win.queue_nak(self._win.rx_next)
                self._win.nak_for = None
                self._cond.notify_all()
            if need_ack:
                self._queue_ack_locked()

    def _queue_ack_locked(self, probe: bool = False) -> None:
        if self._hs.session is None:
            return
        self._win.queue_ack(probe)
        self._cond.notify_all()

    def _on_data(self, f: Frame) -> bool:
        if self._hs.session is None:
            now = time.monotonic()
            if now - self._no_session_nak_at > self.config.ack_timeout / 2:
                self._no_session_nak_at = now
                self._win.queue_nak(f.seq, FLAG_NO_SESSION)
                self._cond.notify_all()
            return False
        need_ack = self._win.on_data(f)
        self._cond.notify_all()
        return need_ack

    def _on_ack(self, f: Frame) -> None:
        if f.flags & FLAG_PROBE:
            self._queue_ack_locked()
        if self._hs.session is None:
            return
        self._win.on_ack(f)
        self._cond.notify_all()

    def _on_nak(self, f: Frame) -> None:
        if self._hs.session is None:
            return
        if self._win.on_nak(f):
            self._fail_locked(f"the peer on {port_name(self.port)} has no session with us (it restarted?); "
                              "connect again")
        self._cond.notify_all()

    # ------------------------------------------------------------------ writer thread
    def _next_frame_locked(self) -> tuple[bytes, Entry | None] | None:
        """The next frame to write, or None (then ``self._writer_wait`` says how long to sleep).

        Control frames first, then retransmissions that are due, then new data frames.
        """
        self._writer_wait = None
        frame = self._win.next_control()
        if frame is not None:
            return frame, None
        if self._hs.session is None or self._failed is not None:
            return None
        cfg = self.config
        now = time.monotonic()
        due, next_deadline = self._win.next_due(now)
        if due is not None:
            if due.tries > cfg.max_retries:
                self._fail_locked(
                    f"the peer on {port_name(self.port)} stopped answering: {type_name(due.ftype)} frame "
                    f"unacknowledged after {due.tries} tries in {now - due.first_sent:.1f}s "
                    f"(ack_timeout={cfg.ack_timeout:g}s, max_retries={cfg.max_retries})")
                return None
            return due.frame, self._win.retransmit(due)
        e = self._win.next_new(now)
        if e is not None:
            return e.frame, e
        if next_deadline is not None:
            self._writer_wait = max(0.0, next_deadline - now)
        return None

    def _writer(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    picked = self._next_frame_locked()
                    if picked is not None:
                        break
                    self._cond.wait(self._writer_wait)
            frame, entry = picked
            t0 = time.monotonic()
            try:
                self.port.write(frame)
            except Exception as exc:
                # A write timeout (nobody drains the line) fails the session; any other error is the port's.
                timed_out = isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__
                with self._cond:
                    if entry is not None:
                        entry.writing = False
                    if not self._closed:
                        self._fail_locked(f"writing to {port_name(self.port)} failed: {exc}", port_error=not timed_out)
                time.sleep(0.05)
                continue
            with self._cond:
                self._wire_free = max(self._wire_free, t0) + self._wire_time(len(frame))
                self.stats.frames_sent += 1
                self.stats.bytes_written += len(frame)
                if entry is not None:
                    self._win.written(entry, self._wire_free)
                self._cond.notify_all()


_DATA_TYPES = frozenset(t for t in FrameType if t not in CONTROL_TYPES)
