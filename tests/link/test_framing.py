from __future__ import annotations

import random
import struct

import pytest

from edgecxr.device.link.framing import (
    HEADER_SIZE,
    MAGIC,
    OVERHEAD,
    PROTOCOL_VERSION,
    Decoder,
    Frame,
    FrameType,
    encode_frame,
)


def frame(ftype: int = FrameType.REQUEST, payload: bytes = b"hello", seq: int = 7, flags: int = 0) -> bytes:
    return encode_frame(ftype, payload, seq=seq, flags=flags)


def check_invariant(dec: Decoder) -> None:
    st = dec.stats
    assert st.bytes_in == st.frame_bytes + st.skipped_bytes + dec.pending
    assert st.errors == 0


def test_frame_types_are_the_protocol_set() -> None:
    assert [t.name for t in FrameType] == ["HELLO", "HELLO_ACK", "ACK", "NAK", "REQUEST", "RESPONSE", "ERROR",
                                           "FILE_BEGIN", "FILE_CHUNK", "FILE_END", "PROGRESS", "BYE"]


@pytest.mark.parametrize("ftype", list(FrameType))
def test_roundtrip_every_type(ftype: FrameType) -> None:
    data = encode_frame(ftype, b"\x00\xff" * 10, seq=0xFFFFFFFF, flags=3)
    assert len(data) == OVERHEAD + 20
    assert data[:2] == MAGIC
    dec = Decoder()
    (f,) = dec.feed(data)
    assert f == Frame(type=ftype, seq=0xFFFFFFFF, payload=b"\x00\xff" * 10, flags=3, version=PROTOCOL_VERSION)
    assert f.name == ftype.name
    check_invariant(dec)


def test_empty_and_max_payload() -> None:
    dec = Decoder(max_payload=1000)
    out = dec.feed(frame(payload=b"") + frame(payload=b"x" * 1000, seq=8))
    assert [(f.seq, len(f.payload)) for f in out] == [(7, 0), (8, 1000)]
    check_invariant(dec)


def test_byte_by_byte_feed_gives_the_same_frames() -> None:
    stream = b"".join(frame(payload=bytes([i]) * i, seq=i) for i in range(30))
    dec = Decoder()
    out = [f for b in stream for f in dec.feed(bytes([b]))]
    assert [f.seq for f in out] == list(range(30))
    assert all(f.payload == bytes([f.seq]) * f.seq for f in out)
    assert dec.pending == 0
    check_invariant(dec)


def test_garbage_between_frames_is_skipped_and_counted() -> None:
    dec = Decoder()
    out = dec.feed(b"noise" + frame(seq=1) + b"\x00" * 33 + MAGIC + b"zz" + frame(seq=2))
    assert [f.seq for f in out] == [1, 2]
    assert dec.stats.skipped_bytes == 5 + 33 + 4
    check_invariant(dec)


@pytest.mark.parametrize("where", ["magic", "header", "hcrc", "payload", "crc"])
def test_a_flipped_bit_loses_only_that_frame(where: str) -> None:
    bad = bytearray(frame(payload=b"p" * 40, seq=1))
    pos = {"magic": 1, "header": 5, "hcrc": HEADER_SIZE - 1, "payload": HEADER_SIZE + 10, "crc": len(bad) - 2}[where]
    bad[pos] ^= 0x10
    dec = Decoder()
    out = dec.feed(bytes(bad) + frame(payload=b"q" * 40, seq=2) + frame(payload=b"r", seq=3))
    assert [f.seq for f in out] == [2, 3]
    assert out[0].payload == b"q" * 40
    if where in ("header", "hcrc"):
        assert dec.stats.bad_header == 1
    if where in ("payload", "crc"):
        assert dec.stats.bad_crc == 1
    check_invariant(dec)


def test_truncated_frame_then_valid_frames() -> None:
    cut = frame(payload=b"a" * 100, seq=1)[:60]
    dec = Decoder()
    # The truncated header promises 100 payload bytes: a short frame after it waits for more input...
    assert dec.feed(cut + frame(payload=b"b", seq=2)) == []
    # ...and comes out once the promised length is reached and the CRC fails.
    out = dec.feed(frame(payload=b"c" * 200, seq=3))
    assert [f.seq for f in out] == [2, 3]
    assert dec.stats.bad_crc == 1
    check_invariant(dec)


def test_flush_stale_recovers_a_frame_stuck_behind_a_truncated_one() -> None:
    dec = Decoder()
    assert dec.feed(frame(payload=b"a" * 500, seq=1)[:40] + frame(payload=b"b", seq=2)) == []
    out = dec.flush_stale()
    assert [f.seq for f in out] == [2]
    assert dec.stats.stale == 1
    check_invariant(dec)


def test_oversized_length_is_rejected_without_waiting() -> None:
    import binascii

    head = struct.pack(">2sBBBII", MAGIC, PROTOCOL_VERSION, FrameType.REQUEST, 0, 1, 10_000_000)
    head += struct.pack(">H", binascii.crc_hqx(head, 0xFFFF))
    dec = Decoder(max_payload=4096)
    out = dec.feed(head + frame(seq=9))
    assert [f.seq for f in out] == [9]
    assert dec.stats.oversized == 1
    check_invariant(dec)


def test_encode_rejects_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        encode_frame(256, b"")
    with pytest.raises(ValueError):
        encode_frame(FrameType.ACK, b"", seq=-1)
    with pytest.raises(ValueError):
        encode_frame(FrameType.ACK, b"", seq=1 << 32)
    with pytest.raises(ValueError):
        encode_frame(FrameType.ACK, b"x" * 10, max_payload=9)


def test_non_bytes_input_does_not_raise_or_lose_buffered_data() -> None:
    dec = Decoder()
    data = frame(seq=5)
    assert dec.feed(data[:10]) == []
    assert dec.feed("not bytes") == []  # type: ignore[arg-type]
    assert dec.feed(None) == []  # type: ignore[arg-type]
    assert [f.seq for f in dec.feed(data[10:])] == [5]
    assert dec.stats.errors == 2


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0:  # bit flips
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        del b[rng.randrange(1, len(b)):]
    elif op == 2:  # a dropped span
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 20)]
    elif op == 3:  # inserted noise
        i = rng.randrange(len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 20))
    elif op == 4:  # a corrupted length field with a valid-looking header start
        b[9:13] = rng.randbytes(4)
    else:  # duplicated head
        b = b[: rng.randrange(len(b))] + b
    return bytes(b)


def test_fuzz_mutated_frames_and_garbage_never_raise_and_valid_frames_survive() -> None:
    rng = random.Random(20240607)
    dec = Decoder(max_payload=2048)
    iterations = 3000
    recovered = 0
    genuine: set[tuple[int, int, bytes]] = set()
    for it in range(iterations):
        stream = bytearray()
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.4:
                stream += rng.randbytes(rng.randint(0, 300))
            else:
                ftype, payload, seq = rng.choice(list(FrameType)), rng.randbytes(rng.randint(0, 600)), rng.getrandbits(32)
                genuine.add((ftype, seq, payload))
                stream += _mutate(rng, encode_frame(ftype, payload, seq=seq))
        sentinel_payload = b"sentinel-%d" % it
        sentinel = encode_frame(FrameType.PROGRESS, sentinel_payload, seq=it, flags=1)
        stream += sentinel
        out: list[Frame] = []
        pos = 0
        while pos < len(stream):  # random chunking
            n = rng.randint(1, 700)
            out += dec.feed(bytes(stream[pos:pos + n]))
            pos += n
        while not any(f.payload == sentinel_payload for f in out) and dec.pending:
            out += dec.flush_stale()  # what the reader does when the line goes quiet
        found = [f for f in out if f.payload == sentinel_payload]
        assert len(found) == 1, f"iteration {it}: sentinel lost"
        assert found[0] == Frame(type=FrameType.PROGRESS, seq=it, payload=sentinel_payload, flags=1)
        assert out[-1] == found[0]
        # Whatever else came out is a frame that was really sent (a mutation that left it intact), never a
        # frame made up from damaged bytes.
        assert all((f.type, f.seq, f.payload) in genuine for f in out[:-1])
        recovered += 1
        check_invariant(dec)
    assert recovered == iterations
    st = dec.stats
    assert st.bad_crc > 100 and st.bad_header > 100 and st.skipped_bytes > 100_000  # the fuzz did bite


def test_fuzz_random_bytes_never_produce_frames() -> None:
    rng = random.Random(1234)
    dec = Decoder()
    total = 0
    for _ in range(3000):
        blob = rng.randbytes(rng.randint(0, 400))
        if rng.random() < 0.2:
            blob = MAGIC + blob  # make the decoder look at a header candidate
        total += len(blob)
        assert dec.feed(blob) == []
    assert dec.stats.frames == 0
    check_invariant(dec)
    while dec.pending:
        assert dec.flush_stale() == []
    (f,) = dec.feed(frame(seq=42))
    assert f.seq == 42
    assert dec.stats.bytes_in == total + len(frame(seq=42))
