"""Byte framing for the serial link: frame encoding and an incremental decoder.  No I/O.

Wire format of one frame (all integers big-endian)::

    magic    2 bytes   b"\\xc5\\x7a"
    version  u8        link protocol version of the sender
    type     u8        FrameType
    flags    u8        FLAG_* bits
    seq      u32       sequence number (ACK/NAK: the sequence number they refer to)
    length   u32       payload length
    hcrc     u16       CRC-16/CCITT of magic..length (lets the decoder reject a corrupt length early)
    payload  length bytes
    crc      u32       CRC-32 of magic..hcrc + payload

The decoder hunts for the magic, checks the header CRC, the length limit and the
frame CRC, and on any failure skips one byte and hunts again: garbage, flipped
bits, truncated frames and absurd lengths cost only the damaged frame, never the
frames that follow it.
"""

from __future__ import annotations

import binascii
import struct
import zlib
from dataclasses import asdict, dataclass, field
from enum import IntEnum

MAGIC = b"\xc5\x7a"
PROTOCOL_VERSION = 1
DEFAULT_MAX_PAYLOAD = 64 * 1024

_HEAD = struct.Struct(">2sBBBII")
_HCRC = struct.Struct(">H")
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _HCRC.size  # 15
OVERHEAD = HEADER_SIZE + _CRC.size  # 19 bytes per frame
MAX_SEQ = 0xFFFFFFFF

FLAG_MORE = 0x01  # data frame: the message continues in the next frame
FLAG_PROBE = 0x02  # ACK: "are you there?" -- the peer answers with an ACK
FLAG_NO_SESSION = 0x04  # NAK: "I have no session with you" (the peer restarted or never said HELLO)


class FrameType(IntEnum):
    HELLO = 1
    HELLO_ACK = 2
    ACK = 3
    NAK = 4
    REQUEST = 5
    RESPONSE = 6
    ERROR = 7
    FILE_BEGIN = 8
    FILE_CHUNK = 9
    FILE_END = 10
    PROGRESS = 11
    BYE = 12


CONTROL_TYPES = frozenset({FrameType.HELLO, FrameType.HELLO_ACK, FrameType.ACK, FrameType.NAK})
"""Frames outside the reliable channel (never acknowledged, never retransmitted by seq)."""


def type_name(ftype: int) -> str:
    try:
        return FrameType(ftype).name
    except ValueError:
        return f"type{ftype}"


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int = 0
    payload: bytes = b""
    flags: int = 0
    version: int = PROTOCOL_VERSION

    @property
    def name(self) -> str:
        return type_name(self.type)

    def encode(self) -> bytes:
        return encode_frame(self.type, self.payload, seq=self.seq, flags=self.flags, version=self.version)


def encode_frame(ftype: int, payload: bytes = b"", seq: int = 0, flags: int = 0,
                 version: int = PROTOCOL_VERSION, max_payload: int | None = None) -> bytes:
    """Encode one frame.  Raises ValueError for out-of-range fields (a bug on our side, not line noise)."""
    for what, value, hi in (("type", ftype, 0xFF), ("flags", flags, 0xFF), ("version", version, 0xFF),
                            ("seq", seq, MAX_SEQ)):
        if not 0 <= int(value) <= hi:
            raise ValueError(f"frame {what} {value} out of range 0..{hi}")
    payload = bytes(payload)
    limit = MAX_SEQ if max_payload is None else max_payload
    if len(payload) > limit:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds the limit of {limit}")
    head = _HEAD.pack(MAGIC, version, int(ftype), flags, seq, len(payload))
    head += _HCRC.pack(binascii.crc_hqx(head, 0xFFFF))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


@dataclass
class DecoderStats:
    """What the decoder saw.  Invariant: ``bytes_in == frame_bytes + skipped_bytes + Decoder.pending``."""

    bytes_in: int = 0
    frames: int = 0
    frame_bytes: int = 0  # bytes that were part of decoded frames
    skipped_bytes: int = 0  # bytes discarded while hunting for a frame start
    bad_header: int = 0  # magic found but header CRC wrong
    bad_crc: int = 0  # header fine, frame CRC wrong (corrupt or truncated frame)
    oversized: int = 0  # header fine but length above max_payload
    stale: int = 0  # partial frames abandoned by flush_stale()
    errors: int = 0  # internal errors swallowed at the boundary (should stay 0)

    @property
    def damaged(self) -> int:
        """Frames known to be lost to damage (header or payload CRC, length)."""
        return self.bad_header + self.bad_crc + self.oversized

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Decoder:
    """Incremental frame decoder: ``feed(bytes) -> list[Frame]``.  Never raises."""

    max_payload: int = DEFAULT_MAX_PAYLOAD
    stats: DecoderStats = field(default_factory=DecoderStats)

    def __post_init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes buffered: the start of a frame not yet complete (or a lone first magic byte)."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        out: list[Frame] = []
        try:
            chunk = bytes(data)
        except Exception:  # not bytes-like: nothing was fed
            self.stats.errors += 1
            return out
        try:
            self.stats.bytes_in += len(chunk)
            self._buf += chunk
            self._decode(out)
        except Exception:  # the boundary: no input may crash the reader
            self.stats.errors += 1
            self.stats.skipped_bytes += len(self._buf)
            self._buf.clear()
        return out

    def flush_stale(self) -> list[Frame]:
        """Give up on a partial frame (the line went quiet mid-frame) and rescan what follows its magic."""
        out: list[Frame] = []
        try:
            if self._buf:
                self.stats.stale += 1
                self.stats.skipped_bytes += 1
                del self._buf[:1]
                self._decode(out)
        except Exception:
            self.stats.errors += 1
            self.stats.skipped_bytes += len(self._buf)
            self._buf.clear()
        return out

    def _decode(self, out: list[Frame]) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        st = self.stats
        while True:
            i = buf.find(MAGIC, pos)
            if i < 0:
                keep = 1 if n > pos and buf[n - 1] == MAGIC[0] else 0
                st.skipped_bytes += n - pos - keep
                pos = n - keep
                break
            st.skipped_bytes += i - pos
            pos = i
            if n - pos < HEADER_SIZE:
                break
            _, version, ftype, flags, seq, length = _HEAD.unpack_from(buf, pos)
            (hcrc,) = _HCRC.unpack_from(buf, pos + _HEAD.size)
            if binascii.crc_hqx(buf[pos:pos + _HEAD.size], 0xFFFF) != hcrc:
                st.bad_header += 1
                st.skipped_bytes += 1
                pos += 1
                continue
            if length > self.max_payload:
                st.oversized += 1
                st.skipped_bytes += 1
                pos += 1
                continue
            end = pos + HEADER_SIZE + length + _CRC.size
            if n < end:
                break
            body_end = end - _CRC.size
            (crc,) = _CRC.unpack_from(buf, body_end)
            if zlib.crc32(buf[pos:body_end]) != crc:
                st.bad_crc += 1
                st.skipped_bytes += 1
                pos += 1
                continue
            out.append(Frame(type=ftype, seq=seq, payload=bytes(buf[pos + HEADER_SIZE:body_end]),
                             flags=flags, version=version))
            st.frames += 1
            st.frame_bytes += end - pos
            pos = end
        del buf[:pos]
