from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from edgecxr.device.link import FileReceiver, TransferError
from edgecxr.device.link.files import CHUNK_HEADER, check_name


def begin_meta(data: bytes, name: str = "bundle.tar", xid: int = 5) -> dict:
    return {"id": xid, "name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def chunk(xid: int, offset: int, data: bytes) -> bytes:
    return CHUNK_HEADER.pack(xid, offset) + data


def feed(rx: FileReceiver, data: bytes, start: int, stop: int, xid: int = 5, size: int = 1000) -> None:
    for off in range(start, stop, size):
        rx.write_chunk(chunk(xid, off, data[off:min(off + size, stop)]))


def test_receive_verify_and_rename(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    rx = FileReceiver(tmp_path / "in")
    meta = begin_meta(data)
    assert rx.begin(meta) == 0
    feed(rx, data, 0, 6000)
    assert not (tmp_path / "in" / "bundle.tar").exists()  # never under its final name while partial
    part, record = rx.paths(meta["sha256"])
    assert part.exists() and record.exists()
    feed(rx, data, 6000, 10_000)
    dest = rx.finish({"size": len(data), "sha256": meta["sha256"]})
    assert dest == tmp_path / "in" / "bundle.tar" and dest.read_bytes() == data
    assert not part.exists() and not record.exists()


def test_resume_from_the_offset_record(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    meta = begin_meta(data)
    rx = FileReceiver(tmp_path / "in", record_every=64 * 1024)
    rx.begin(meta)
    feed(rx, data, 0, 150_000)
    rx.abort()  # link cut: flush and record the offset
    record = json.loads(rx.paths(meta["sha256"])[1].read_text())
    assert record["offset"] == 150_000 and record["size"] == len(data)

    rx2 = FileReceiver(tmp_path / "in")  # e.g. a restarted agent
    assert rx2.begin({**meta, "id": 6}) == 150_000
    feed(rx2, data, 150_000, len(data), xid=6)
    assert rx2.finish({"size": len(data), "sha256": meta["sha256"]}).read_bytes() == data


def test_resume_trusts_neither_record_nor_file_beyond_the_other(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    meta = begin_meta(data)
    rx = FileReceiver(tmp_path / "in")
    part, record = rx.paths(meta["sha256"])
    part.parent.mkdir(parents=True)
    # A crash after the record said 40000 but only 30000 bytes reached the disk.
    part.write_bytes(data[:30_000])
    record.write_text(json.dumps({"sha256": meta["sha256"], "size": len(data), "offset": 40_000}))
    assert rx.begin(meta) == 30_000
    rx.abort()
    # A record behind the file: the file is cut back to the record.
    part.write_bytes(data[:45_000])
    record.write_text(json.dumps({"sha256": meta["sha256"], "size": len(data), "offset": 20_000}))
    assert rx.begin(meta) == 20_000
    assert part.stat().st_size == 20_000
    feed(rx, data, 20_000, len(data))
    assert rx.finish({"size": len(data), "sha256": meta["sha256"]}).read_bytes() == data


def test_a_partial_file_without_record_starts_over(tmp_path: Path) -> None:
    data = os.urandom(5000)
    meta = begin_meta(data)
    rx = FileReceiver(tmp_path / "in")
    part, _ = rx.paths(meta["sha256"])
    part.parent.mkdir(parents=True)
    part.write_bytes(b"junk" * 100)
    assert rx.begin(meta) == 0
    assert part.stat().st_size == 0


def test_sha_mismatch_discards_and_never_installs(tmp_path: Path) -> None:
    data = os.urandom(8000)
    meta = begin_meta(data)
    rx = FileReceiver(tmp_path / "in")
    rx.begin(meta)
    bad = bytearray(data)
    bad[100] ^= 1
    feed(rx, bytes(bad), 0, len(bad))
    with pytest.raises(TransferError, match="sha256 mismatch"):
        rx.finish({"size": len(data), "sha256": meta["sha256"]})
    part, record = rx.paths(meta["sha256"])
    assert not part.exists() and not record.exists()
    assert not (tmp_path / "in" / "bundle.tar").exists()


def test_incomplete_finish_keeps_the_partial_for_resume(tmp_path: Path) -> None:
    data = os.urandom(8000)
    meta = begin_meta(data)
    rx = FileReceiver(tmp_path / "in")
    rx.begin(meta)
    feed(rx, data, 0, 4000)
    with pytest.raises(TransferError, match="incomplete, 4000 of 8000"):
        rx.finish({"size": len(data), "sha256": meta["sha256"]})
    assert not (tmp_path / "in" / "bundle.tar").exists()
    assert FileReceiver(tmp_path / "in").begin(meta) == 4000


def test_bad_chunks_are_refused(tmp_path: Path) -> None:
    data = os.urandom(3000)
    rx = FileReceiver(tmp_path / "in")
    rx.begin(begin_meta(data))
    with pytest.raises(TransferError, match="offset 1000, expected 0"):
        rx.write_chunk(chunk(5, 1000, data[1000:2000]))
    with pytest.raises(TransferError, match="another transfer"):
        rx.write_chunk(chunk(77, 0, data[:1000]))
    with pytest.raises(TransferError, match="more data than"):
        rx.write_chunk(chunk(5, 0, data + b"x"))
    with pytest.raises(TransferError, match="no file transfer"):
        FileReceiver(tmp_path / "x").write_chunk(chunk(5, 0, b"x"))


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x\\y", " spaced", None, "z" * 300])
def test_unsafe_names_are_refused(name: object) -> None:
    with pytest.raises(TransferError):
        check_name(name)


def test_begin_validates_meta(tmp_path: Path) -> None:
    rx = FileReceiver(tmp_path / "in", max_size=100)
    with pytest.raises(TransferError, match="sha256"):
        rx.begin({"id": 1, "name": "a", "size": 1, "sha256": "nothex"})
    with pytest.raises(TransferError, match="size"):
        rx.begin({"id": 1, "name": "a", "size": -1, "sha256": "0" * 64})
    with pytest.raises(TransferError, match="limit of 100"):
        rx.begin({"id": 1, "name": "a", "size": 101, "sha256": "0" * 64})
