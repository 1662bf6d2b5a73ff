"""The retransmission window of the link: the write queues, sequence numbers, ACK/NAK bookkeeping,
the choice of the next frame to write, and in-order delivery (with reassembly) of what arrives.

Reliability is a sliding window with cumulative ACKs carrying selective acknowledgements, a NAK
on a gap or a damaged frame (fast retransmit), and a retransmission timer per frame.  No I/O and
no locks: :class:`~edgecxr.device.link.transport.Transport` calls :class:`Window` under its lock.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from edgecxr.device.link.config import LinkConfig, LinkStats
from edgecxr.device.link.framing import (
    FLAG_MORE,
    FLAG_NO_SESSION,
    FLAG_PROBE,
    MAX_SEQ,
    Frame,
    FrameType,
    encode_frame,
    type_name,
)
from edgecxr.device.link.message import Message, as_type

log = logging.getLogger("edgecxr.device.link")

NAK_GUARD_S = 0.005
"""A NAK for a frame already resent, whose copy has not left the wire yet (by the wire model, plus this
margin), refers to the older copy and is ignored: no duplicate retransmissions."""


@dataclass
class Entry:
    """One data frame of ours that the peer has not acknowledged yet."""

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
class _Fragments:
    ftype: int = 0
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    overflow: bool = False


class Window:
    """Both directions of the sliding window, and the queues the writer thread drains."""

    def __init__(self, config: LinkConfig, stats: LinkStats):
        self.config = config
        self.stats = stats
        self.ctrl: deque[bytes] = deque()  # control frames (HELLO, HELLO_ACK, NAK, probes), written first
        self.ack_slot: bytes | None = None  # the newest plain ACK, written next
        self.unsent: deque[Entry] = deque()
        self.unacked: dict[int, Entry] = {}
        self.inbox: deque[Message] = deque()
        self.tx_next = 0
        self.tx_base = 0
        self.tx_sent_end = 0
        self.rx_next = 0
        self.rx_buf: dict[int, Frame] = {}
        self.frag = _Fragments()
        self.nak_for: int | None = None

    # ------------------------------------------------------------------ session boundaries
    def clear(self) -> None:
        """Drop everything in flight and undelivered (a new session, or none)."""
        self.unsent.clear()
        self.unacked.clear()
        self.rx_buf.clear()
        self.frag = _Fragments()
        self.inbox.clear()
        self.nak_for = None

    def start(self, seq0: int, peer_seq0: int) -> None:
        """Number our frames from ``seq0`` and expect the peer's from ``peer_seq0``."""
        self.tx_next = self.tx_base = self.tx_sent_end = seq0
        self.rx_next = peer_seq0

    def drop_sends(self) -> None:
        self.unsent.clear()
        self.unacked.clear()

    @property
    def control_pending(self) -> bool:
        return bool(self.ctrl) or self.ack_slot is not None

    # ------------------------------------------------------------------ sending
    def push(self, ftype: int, part: bytes, more: bool) -> None:
        """Queue one data frame (the caller has checked that the window has room)."""
        seq = self.tx_next
        self.tx_next += 1
        frame = encode_frame(ftype, part, seq=seq & MAX_SEQ, flags=FLAG_MORE if more else 0,
                             version=self.config.protocol_version)
        entry = Entry(seq=seq, ftype=ftype, frame=frame)
        self.unacked[seq] = entry
        self.unsent.append(entry)

    def queue_ack(self, probe: bool = False) -> None:
        sacks = sorted(self.rx_buf)[:64]
        payload = struct.pack(f">{len(sacks)}I", *(s & MAX_SEQ for s in sacks))
        frame = encode_frame(FrameType.ACK, payload, seq=self.rx_next & MAX_SEQ, flags=FLAG_PROBE if probe else 0,
                             version=self.config.protocol_version)
        if probe:
            self.ctrl.append(frame)
        else:
            self.ack_slot = frame  # the newest ACK supersedes one not yet written
        self.stats.acks_sent += 1

    def queue_nak(self, seq: int, flags: int = 0) -> None:
        self.ctrl.append(encode_frame(FrameType.NAK, b"", seq=seq & MAX_SEQ, flags=flags,
                                      version=self.config.protocol_version))
        self.stats.naks_sent += 1

    # ------------------------------------------------------------------ choosing what to write
    def next_control(self) -> bytes | None:
        if self.ctrl:
            return self.ctrl.popleft()
        if self.ack_slot is not None:
            frame, self.ack_slot = self.ack_slot, None
            return frame
        return None

    def next_due(self, now: float) -> tuple[Entry | None, float | None]:
        """The first sent frame whose timer has run out (or None), and the earliest deadline before it."""
        next_deadline = None
        for e in self.unacked.values():
            if not e.sent or e.writing or e.sacked:
                continue
            if e.deadline <= now:
                return e, next_deadline
            if next_deadline is None or e.deadline < next_deadline:
                next_deadline = e.deadline
        return None, next_deadline

    def retransmit(self, e: Entry) -> Entry:
        if e.deadline >= e.arrive_at + self.config.ack_timeout:  # not brought forward by a NAK
            self.stats.timeouts += 1
        e.tries += 1
        e.writing = True
        self.stats.retransmits += 1
        return e

    def next_new(self, now: float) -> Entry | None:
        """The next frame never written, marked as being written, or None."""
        if not self.unsent:
            return None
        e = self.unsent.popleft()
        e.tries = 1
        e.sent = e.writing = True
        e.first_sent = now
        self.tx_sent_end = max(self.tx_sent_end, e.seq + 1)
        self.stats.data_frames_sent += 1
        return e

    def written(self, e: Entry, arrive_at: float) -> None:
        """``e`` has been written; it leaves the wire at ``arrive_at``, its ACK is awaited from then."""
        e.writing = False
        e.arrive_at = arrive_at
        e.deadline = arrive_at + self.config.ack_timeout
        if e.nak_pending:
            e.nak_pending = False
            e.deadline = time.monotonic()

    # ------------------------------------------------------------------ what the peer says about ours
    def on_ack(self, f: Frame) -> None:
        """A cumulative ACK with selective acknowledgements (a probe is answered by the caller)."""
        n = f.seq
        if not self.tx_base <= n <= self.tx_sent_end:
            self.stats.foreign += 1
            return
        for seq in range(self.tx_base, n):
            self.unacked.pop(seq, None)
        self.tx_base = n
        for i in range(len(f.payload) // 4):
            (s,) = struct.unpack_from(">I", f.payload, 4 * i)
            e = self.unacked.get(s)
            if e is not None and e.sent:
                e.sacked = True

    def on_nak(self, f: Frame) -> bool:
        """Bring the NAK'd frame's retransmission forward; True when the peer says it has no session with us."""
        e = self.unacked.get(f.seq)
        if f.flags & FLAG_NO_SESSION:
            return e is not None and e.sent
        self.stats.naks_received += 1
        if e is None or not e.sent:
            return False
        if e.writing:
            if e.tries == 1:  # its header was hit while we were still writing it: resend right after
                e.nak_pending = True
            return False
        now = time.monotonic()
        if e.tries > 1 and now < e.arrive_at + NAK_GUARD_S:
            return False  # already resent and the copy is still on the wire: this NAK is about an older copy
        e.sacked = False
        e.deadline = now
        return False

    # ------------------------------------------------------------------ what arrives
    def on_data(self, f: Frame) -> bool:
        """Take a data frame of the session; deliver what is now in order.  True when an ACK is due."""
        seq = f.seq
        rx_next = self.rx_next
        if seq < rx_next or seq in self.rx_buf:
            self.stats.duplicates += 1
            return True
        if seq >= rx_next + self.config.window:
            self.stats.foreign += 1
            return False
        self.rx_buf[seq] = f
        if seq != rx_next:
            self.stats.out_of_order += 1
            if self.nak_for != rx_next:
                self.nak_for = rx_next
                self.queue_nak(rx_next)
        while self.rx_next in self.rx_buf:
            self._deliver(self.rx_buf.pop(self.rx_next))
            self.rx_next += 1
        return True

    def _deliver(self, f: Frame) -> None:
        frag = self.frag
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
            self.frag = _Fragments()
            if frag.overflow:
                return
            ftype, payload = frag.ftype, b"".join(frag.parts)
        else:
            ftype, payload = f.type, f.payload
        self.inbox.append(Message(as_type(ftype), payload))
        self.stats.messages_received += 1
