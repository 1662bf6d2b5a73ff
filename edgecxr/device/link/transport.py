"""A reliable, ordered message channel over any byte stream with ``read(n)``/``write(b)``/``timeout``.

Layering follows pyserial's ``serial.threaded``: :mod:`edgecxr.device.link.framing` cuts the
byte stream into frames (no I/O); :class:`Transport` owns the port and two threads:

* the reader feeds bytes to the decoder, answers ACK/NAK/HELLO at once and queues
  in-order messages for :meth:`Transport.recv`;
* the writer is the only thread that writes to the port: control frames first, then
  retransmissions that are due, then new data frames.

Reliability is a sliding window (default 8 frames) with cumulative ACKs carrying
selective acknowledgements, a NAK on a gap or a damaged frame (fast retransmit), and a
retransmission timer per frame.  A frame that is still unacknowledged after
``max_retries`` retransmissions makes the link fail with one :class:`LinkError`.

Timing model: when the line rate is known (``LinkConfig.baud``, or ``port.baudrate`` of
a real serial port) the writer tracks when each frame will have left the wire, so a
frame queued behind 30 KiB at 115200 baud is not declared lost while it is still in
the UART's buffer.  Its ACK is then awaited for ``ack_timeout`` more seconds.

Handshake: the host sends HELLO (protocol version, role, tool version, a nonce and its
initial sequence number); the agent checks the version and role and answers HELLO_ACK
(accepted, or refused with a one-line reason).  Each HELLO starts a new session: both
sides drop what they had in flight, so a host that reconnects after a cut starts clean.
"""

from __future__ import annotations

import json
import logging
import random
import struct
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from edgecxr import __version__
from edgecxr.device.link.errors import LinkError, ProtocolMismatch
from edgecxr.device.link.framing import (
    CONTROL_TYPES,
    DEFAULT_MAX_PAYLOAD,
    FLAG_MORE,
    FLAG_NO_SESSION,
    FLAG_PROBE,
    MAX_SEQ,
    OVERHEAD,
    PROTOCOL_VERSION,
    Decoder,
    Frame,
    FrameType,
    encode_frame,
    type_name,
)

log = logging.getLogger("edgecxr.device.link")

NAK_GUARD_S = 0.005
"""A NAK for a frame already resent, whose copy has not left the wire yet (by the wire model, plus this
margin), refers to the older copy and is ignored: no duplicate retransmissions."""


class BytePort(Protocol):
    """What the transport needs from a port (``serial.Serial`` and :class:`PtyPort` both fit)."""

    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...


@dataclass
class LinkConfig:
    """Knobs of the link.  Dead-peer detection takes about ``(max_retries + 1) * ack_timeout`` seconds."""

    ack_timeout: float = 1.0  # seconds to wait for an ACK once a frame has left the wire
    max_retries: int = 8  # retransmissions of one frame (or HELLO attempts - 1) before LinkError
    window: int = 8  # data frames in flight
    max_payload: int = DEFAULT_MAX_PAYLOAD  # largest frame payload accepted by our decoder
    chunk_size: int = 4096  # file chunk size; long messages are split into frames of about this size
    baud: int | None = None  # line rate for the wire model; None = port.baudrate of a real serial port
    poll_interval: float = 0.05  # reader wake-up period (sets port.timeout if it is unset or longer)
    max_message: int = 64 * 1024 * 1024  # largest reassembled message
    protocol_version: int = PROTOCOL_VERSION
    tool_version: str = f"edgecxr {__version__}"

    def __post_init__(self) -> None:
        if self.ack_timeout <= 0:
            raise ValueError("ack_timeout must be > 0")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 1 <= self.window <= 256:
            raise ValueError("window must be in 1..256")
        if self.max_payload < 256:
            raise ValueError("max_payload must be >= 256")
        if not 64 <= self.chunk_size <= self.max_payload - 64:
            raise ValueError(f"chunk_size must be in 64..{self.max_payload - 64} (max_payload - 64)")
        if self.baud is not None and self.baud <= 0:
            raise ValueError("baud must be > 0")

    @property
    def fragment_size(self) -> int:
        """Payload bytes per data frame: one file chunk plus its 12-byte chunk header fits."""
        return min(self.max_payload, self.chunk_size + 64)


@dataclass(frozen=True)
class Message:
    """One message of the reliable channel (a HELLO message is the notice that a peer opened a session)."""

    type: int
    payload: bytes = b""

    @property
    def name(self) -> str:
        return type_name(self.type)

    def json(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise LinkError(f"malformed {self.name} message from the peer: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None
        if not isinstance(obj, dict):
            raise LinkError(f"malformed {self.name} message from the peer: not a JSON object")
        return obj


@dataclass
class LinkStats:
    frames_sent: int = 0
    frames_received: int = 0
    data_frames_sent: int = 0  # first transmissions
    retransmits: int = 0
    timeouts: int = 0  # retransmissions caused by the timer (the rest were NAK'd)
    naks_sent: int = 0
    naks_received: int = 0
    acks_sent: int = 0
    probes_sent: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    foreign: int = 0  # frames of another protocol version or session, ignored
    bytes_written: int = 0
    bytes_read: int = 0
    messages_sent: int = 0
    messages_received: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _loads_dict(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


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


@dataclass
class _Entry:
    seq: int
    ftype: int
    frame: bytes
    tries: int = 0
    sent: bool = False
    writing: bool = False
    sacked: bool = False
    nak_pending: bool = False
    first_sent: float = 0.0
    arrive_at: float = 0.0
    deadline: float = float("inf")


@dataclass
class _Session:
    nonce: int
    peer: dict[str, Any]
    initiator: bool
    window: int
    fragment_size: int
    ack_frame: bytes | None = None  # responder: our HELLO_ACK, re-sent on a duplicate HELLO


@dataclass
class _HelloWait:
    nonce: int
    seq0: int
    reply: dict[str, Any] | None = None


@dataclass
class _Fragments:
    ftype: int = 0
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False


class Transport:
    """Reliable ordered messages over a byte port.  Thread-safe; one session at a time."""

    def __init__(self, port: BytePort, config: LinkConfig | None = None, *, role: str = "host",
                 info: dict[str, Any] | None = None):
        self.port = port
        self.config = config or LinkConfig()
        self.role = role
        self.info = dict(info or {})
        self.stats = LinkStats()
        self.decoder = Decoder(max_payload=self.config.max_payload)
        self.baud = self.config.baud or _port_baud(port)
        self.last_refusal: str | None = None
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._ctrl: deque[bytes] = deque()
        self._ack_slot: bytes | None = None
        self._unsent: deque[_Entry] = deque()
        self._unacked: dict[int, _Entry] = {}
        self._tx_next = 0
        self._tx_base = 0
        self._tx_sent_end = 0
        self._rx_next = 0
        self._rx_buf: dict[int, Frame] = {}
        self._frag = _Fragments()
        self._inbox: deque[Message] = deque()
        self._session: _Session | None = None
        self._hello: _HelloWait | None = None
        self._failed: LinkError | None = None
        self._port_error = False
        self._closed = False
        self._started = False
        self._threads: list[threading.Thread] = []
        self._last_rx = 0.0
        self._last_probe = 0.0
        self._wire_free = 0.0
        self._nak_for: int | None = None
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
            while (self._ctrl or self._ack_slot is not None) and self._started and not self._port_error:
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
    def connected(self) -> bool:
        return self._session is not None and self._failed is None and not self._closed

    @property
    def peer(self) -> dict[str, Any] | None:
        s = self._session
        return dict(s.peer) if s is not None else None

    @property
    def session_id(self) -> int | None:
        """The nonce of the current session (changes on every HELLO), or None."""
        s = self._session
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
        nonce = random.randrange(1, MAX_SEQ)
        seq0 = random.randrange(0, 1 << 30)
        body = {"proto": cfg.protocol_version, "role": self.role, "tool": cfg.tool_version, "nonce": nonce,
                "seq0": seq0, "max_payload": cfg.max_payload, "window": cfg.window, "info": self.info}
        frame = encode_frame(FrameType.HELLO, dumps(body), seq=nonce, version=cfg.protocol_version)
        attempts = cfg.max_retries + 1
        per_try = cfg.ack_timeout + self._wire_time(len(frame) + 1024)
        t0 = time.monotonic()
        with self._cond:
            self._check_open_locked()
            self._reset_locked()
            self._hello = wait = _HelloWait(nonce=nonce, seq0=seq0)
            try:
                for _ in range(attempts):
                    self._ctrl.append(frame)
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
                self._hello = None
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
        self._session = None
        self._unsent.clear()
        self._unacked.clear()
        self._rx_buf.clear()
        self._frag = _Fragments()
        self._inbox.clear()
        self._nak_for = None
        if not self._port_error:
            self._failed = None
        self._cond.notify_all()

    def _mismatch(self, peer_proto: Any, peer_tool: Any, peer_role: Any) -> str:
        cfg = self.config
        return (f"link protocol version mismatch: this {self.role} speaks protocol {cfg.protocol_version} "
                f"({cfg.tool_version}), the {peer_role or 'peer'} speaks protocol {peer_proto} "
                f"({peer_tool or 'unknown tool'}); install the same edgecxr release on the host and the board")

    def _on_hello(self, f: Frame) -> None:
        cfg = self.config
        body = _loads_dict(f.payload)
        nonce = f.seq
        s = self._session
        if s is not None and not s.initiator and s.nonce == nonce and s.ack_frame is not None:
            self._ctrl.append(s.ack_frame)  # our HELLO_ACK was lost: say it again, keep the session
            return
        if self._hello is not None:
            return  # we are opening a session ourselves
        peer_proto = body.get("proto", f.version)
        reply: dict[str, Any] = {"proto": cfg.protocol_version, "role": self.role, "tool": cfg.tool_version,
                                 "nonce": nonce, "max_payload": cfg.max_payload, "window": cfg.window,
                                 "info": self.info}
        error = None
        if f.version != cfg.protocol_version or peer_proto != cfg.protocol_version:
            error = self._mismatch(peer_proto if peer_proto != cfg.protocol_version else f.version,
                                   body.get("tool"), body.get("role"))
        elif body.get("role") == self.role:
            error = f"both ends of the link say they are the {self.role}; connect an agent to a host"
        elif not isinstance(body.get("seq0"), int) or not isinstance(body.get("max_payload"), int):
            error = "malformed HELLO (missing seq0/max_payload)"
        if error is not None:
            reply.update(accepted=False, error=error)
            self.last_refusal = error
            log.warning("refused a session: %s", error)
            self._ctrl.append(encode_frame(FrameType.HELLO_ACK, dumps(reply), seq=nonce,
                                           version=cfg.protocol_version))
            self._cond.notify_all()
            return
        self._reset_locked()
        seq0 = random.randrange(0, 1 << 30)
        reply.update(accepted=True, seq0=seq0)
        ack = encode_frame(FrameType.HELLO_ACK, dumps(reply), seq=nonce, version=cfg.protocol_version)
        self._session = _Session(nonce=nonce, peer=body, initiator=False, ack_frame=ack,
                                 window=_peer_window(body, cfg.window),
                                 fragment_size=min(cfg.fragment_size, max(256, int(body["max_payload"]))))
        self._tx_next = self._tx_base = self._tx_sent_end = seq0
        self._rx_next = int(body["seq0"])
        self._inbox.append(Message(FrameType.HELLO, f.payload))
        self._ctrl.append(ack)
        self._cond.notify_all()

    def _on_hello_ack(self, f: Frame) -> None:
        cfg = self.config
        wait = self._hello
        if wait is None or f.seq != wait.nonce or wait.reply is not None:
            return
        body = _loads_dict(f.payload)
        peer_proto = body.get("proto", f.version)
        if not body.get("accepted", False):
            wait.reply = {"accepted": False, "error": body.get("error") or "the peer refused the handshake"}
        elif peer_proto != cfg.protocol_version or f.version != cfg.protocol_version:
            wait.reply = {"accepted": False, "error": self._mismatch(peer_proto, body.get("tool"), body.get("role"))}
        elif body.get("role") == self.role:
            wait.reply = {"accepted": False,
                          "error": f"both ends of the link say they are the {self.role}; connect a host to an agent"}
        elif not isinstance(body.get("seq0"), int) or not isinstance(body.get("max_payload"), int):
            wait.reply = {"accepted": False, "error": "malformed HELLO_ACK from the peer"}
        else:
            self._reset_locked()
            self._session = _Session(nonce=wait.nonce, peer=body, initiator=True,
                                     window=_peer_window(body, cfg.window),
                                     fragment_size=min(cfg.fragment_size, max(256, int(body["max_payload"]))))
            self._tx_next = self._tx_base = self._tx_sent_end = wait.seq0
            self._rx_next = int(body["seq0"])
            wait.reply = dict(body)
        self._cond.notify_all()

    # ------------------------------------------------------------------ sending
    def send(self, ftype: int, payload: bytes = b"") -> None:
        """Queue one message; blocks while the window is full.  Delivery is confirmed by :meth:`flush`."""
        if ftype in CONTROL_TYPES:
            raise ValueError(f"{type_name(ftype)} is a control frame, not a message")
        payload = bytes(payload)
        if len(payload) > self.config.max_message:
            raise LinkError(f"message of {len(payload)} bytes exceeds max_message={self.config.max_message}")
        version = self.config.protocol_version
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
                        if len(self._unacked) < session.window:
                            break
                        self._cond.wait(0.5)
                    seq = self._tx_next
                    self._tx_next += 1
                    frame = encode_frame(ftype, part, seq=seq & MAX_SEQ, flags=FLAG_MORE if i < last else 0,
                                         version=version)
                    entry = _Entry(seq=seq, ftype=ftype, frame=frame)
                    self._unacked[seq] = entry
                    self._unsent.append(entry)
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
                if not self._unacked:
                    return
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise LinkError(f"the peer did not acknowledge {len(self._unacked)} frame(s) within {timeout}s")
                self._cond.wait(0.5 if left is None else min(left, 0.5))

    def _check_open_locked(self) -> None:
        if self._closed:
            raise LinkError(f"link on {port_name(self.port)} is closed")

    def _require_session_locked(self) -> _Session:
        self._check_open_locked()
        if self._failed is not None:
            raise self._failed
        if self._session is None:
            raise LinkError("not connected: no session with the peer (call hello() first)")
        return self._session

    def _fail_locked(self, message: str, port_error: bool = False) -> None:
        if self._failed is None:
            log.warning("link failed: %s", message)
            self._failed = LinkError(message)
        if port_error:
            self._port_error = True
        self._unsent.clear()
        self._unacked.clear()
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
                if self._inbox:
                    return self._inbox.popleft()
                self._check_open_locked()
                if self._failed is not None:
                    raise self._failed
                now = time.monotonic()
                if end is not None and now >= end:
                    return None
                wait = None if end is None else end - now
                if liveness:
                    if self._session is None:
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
            if self._inbox:
                return self._inbox.popleft()
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
        if self._session is not None:
            if damaged:  # most likely the frame we expect next: ask for it now, and NAK the next gap again
                self._queue_nak_locked(self._rx_next)
                self._nak_for = None
            if need_ack:
                self._queue_ack_locked()

    def _queue_ack_locked(self, probe: bool = False) -> None:
        if self._session is None:
            return
        sacks = sorted(self._rx_buf)[:64]
        payload = struct.pack(f">{len(sacks)}I", *(s & MAX_SEQ for s in sacks))
        frame = encode_frame(FrameType.ACK, payload, seq=self._rx_next & MAX_SEQ, flags=FLAG_PROBE if probe else 0,
                             version=self.config.protocol_version)
        if probe:
            self._ctrl.append(frame)
        else:
            self._ack_slot = frame  # the newest ACK supersedes one not yet written
        self.stats.acks_sent += 1
        self._cond.notify_all()

    def _queue_nak_locked(self, seq: int, flags: int = 0) -> None:
        self._ctrl.append(encode_frame(FrameType.NAK, b"", seq=seq & MAX_SEQ, flags=flags,
                                       version=self.config.protocol_version))
        self.stats.naks_sent += 1
        self._cond.notify_all()

    def _on_data(self, f: Frame) -> bool:
        if self._session is None:
            now = time.monotonic()
            if now - self._no_session_nak_at > self.config.ack_timeout / 2:
                self._no_session_nak_at = now
                self._queue_nak_locked(f.seq, FLAG_NO_SESSION)
            return False
        seq = f.seq
        rx_next = self._rx_next
        if seq < rx_next or seq in self._rx_buf:
            self.stats.duplicates += 1
            return True
        if seq >= rx_next + self.config.window:
            self.stats.foreign += 1
            return False
        self._rx_buf[seq] = f
        if seq != rx_next:
            self.stats.out_of_order += 1
            if self._nak_for != rx_next:
                self._nak_for = rx_next
                self._queue_nak_locked(rx_next)
        while self._rx_next in self._rx_buf:
            self._deliver_locked(self._rx_buf.pop(self._rx_next))
            self._rx_next += 1
        return True

    def _deliver_locked(self, f: Frame) -> None:
        frag = self._frag
        if frag.parts or frag.overflow or f.flags & FLAG_MORE:
            if not frag.parts and not frag.overflow:
                frag.ftype = f.type
            if not frag.overflow:
                frag.parts.append(f.payload)
                frag.size += len(f.payload)
                if frag.size > self.config.max_message:
                    log.warning("dropping a %s message larger than max_message", type_name(frag.ftype))
                    frag.parts.clear()
                    frag.overflow = True
            if f.flags & FLAG_MORE:
                return
            self._frag = _Fragments()
            if frag.overflow:
                return
            ftype, payload = frag.ftype, b"".join(frag.parts)
        else:
            ftype, payload = f.type, f.payload
        self._inbox.append(Message(_as_type(ftype), payload))
        self.stats.messages_received += 1
        self._cond.notify_all()

    def _on_ack(self, f: Frame) -> None:
        if f.flags & FLAG_PROBE:
            self._queue_ack_locked()
        if self._session is None:
            return
        n = f.seq
        if not self._tx_base <= n <= self._tx_sent_end:
            self.stats.foreign += 1
            return
        for seq in range(self._tx_base, n):
            self._unacked.pop(seq, None)
        self._tx_base = n
        for i in range(len(f.payload) // 4):
            (s,) = struct.unpack_from(">I", f.payload, 4 * i)
            e = self._unacked.get(s)
            if e is not None and e.sent:
                e.sacked = True
        self._cond.notify_all()

    def _on_nak(self, f: Frame) -> None:
        if self._session is None:
            return
        e = self._unacked.get(f.seq)
        if f.flags & FLAG_NO_SESSION:
            if e is not None and e.sent:
                self._fail_locked(f"the peer on {port_name(self.port)} has no session with us (it restarted?); "
                                  "connect again")
            return
        self.stats.naks_received += 1
        if e is None or not e.sent:
            return
        if e.writing:
            if e.tries == 1:  # its header was hit while we were still writing it: resend right after
                e.nak_pending = True
            return
        now = time.monotonic()
        if e.tries > 1 and now < e.arrive_at + NAK_GUARD_S:
            return  # already resent and the copy is still on the wire: this NAK is about an older copy
        e.sacked = False
        e.deadline = now
        self._cond.notify_all()

    # ------------------------------------------------------------------ writer thread
    def _next_frame_locked(self) -> tuple[bytes, _Entry | None] | None:
        """The next frame to write, or None (then ``self._writer_wait`` says how long to sleep)."""
        self._writer_wait = None
        if self._ctrl:
            return self._ctrl.popleft(), None
        if self._ack_slot is not None:
            frame, self._ack_slot = self._ack_slot, None
            return frame, None
        if self._session is None or self._failed is not None:
            return None
        now = time.monotonic()
        next_deadline = None
        for e in self._unacked.values():
            if not e.sent or e.writing or e.sacked:
                continue
            if e.deadline <= now:
                if e.tries > self.config.max_retries:
                    self._fail_locked(
                        f"the peer on {port_name(self.port)} stopped answering: {type_name(e.ftype)} frame "
                        f"unacknowledged after {e.tries} tries in {now - e.first_sent:.1f}s "
                        f"(ack_timeout={self.config.ack_timeout:g}s, max_retries={self.config.max_retries})")
                    return None
                if e.deadline >= e.arrive_at + self.config.ack_timeout:  # not brought forward by a NAK
                    self.stats.timeouts += 1
                e.tries += 1
                e.writing = True
                self.stats.retransmits += 1
                return e.frame, e
            if next_deadline is None or e.deadline < next_deadline:
                next_deadline = e.deadline
        if self._unsent:
            e = self._unsent.popleft()
            e.tries = 1
            e.sent = e.writing = True
            e.first_sent = now
            self._tx_sent_end = max(self._tx_sent_end, e.seq + 1)
            self.stats.data_frames_sent += 1
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
                    entry.writing = False
                    entry.arrive_at = self._wire_free
                    entry.deadline = self._wire_free + self.config.ack_timeout
                    if entry.nak_pending:
                        entry.nak_pending = False
                        entry.deadline = time.monotonic()
                self._cond.notify_all()


_DATA_TYPES = frozenset(t for t in FrameType if t not in CONTROL_TYPES)


def _as_type(ftype: int) -> int:
    try:
        return FrameType(ftype)
    except ValueError:
        return ftype


def _peer_window(body: dict[str, Any], ours: int) -> int:
    w = body.get("window")
    return max(1, min(ours, w)) if isinstance(w, int) else ours
