"""Chunked file transfer with resume, over a :class:`~edgecxr.device.link.transport.Transport`.

Sender                                   Receiver
  FILE_BEGIN {id, name, size, sha256}  ->
                                       <-  FILE_BEGIN {id, offset}   (bytes it already holds)
  FILE_CHUNK [id u32][offset u64][data] -> ... (from offset to size)
  FILE_END {id, size, sha256}          ->
                                       <-  RESPONSE {id, ok, result}  or  ERROR {id, message}

The receiver writes into ``<staging>/<sha256>.part`` and keeps ``<sha256>.json`` (name,
size, offset) up to date every ``record_every`` bytes and whenever a transfer stops
early.  A later FILE_BEGIN for the same sha256 resumes from that offset.  Only after the
whole file's sha256 matches is it renamed to its final name, so a partial file never
appears under its final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecxr.device.link.errors import LinkError, RemoteError, TransferError
from edgecxr.device.link.framing import FrameType
from edgecxr.device.link.transport import Message, Transport
from edgecxr.shared.fsutil import atomic_write_bytes, sha256_file

log = logging.getLogger("edgecxr.device.link")

CHUNK_HEADER = struct.Struct(">IQ")  # transfer id (low 32 bits), offset
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

ProgressFn = Callable[[dict[str, Any]], None]
BytesProgressFn = Callable[[int, int], None]


@dataclass
class TransferResult:
    """What one :func:`send_file` did.  ``bytes_sent`` counts file bytes sent in this call only."""

    name: str
    size: int
    sha256: str
    resumed_from: int
    bytes_sent: int
    seconds: float
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """File bytes per second sent in this call."""
        return self.bytes_sent / self.seconds if self.seconds > 0 else 0.0


def check_name(name: Any) -> str:
    """A file name safe to create in a store: a plain, non-hidden base name."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise TransferError(f"invalid file name {name!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):  # newlines would forge log and error lines
        raise TransferError(f"invalid file name {name!r}: control characters")
    if "/" in name or "\\" in name or "\0" in name or name.startswith(".") or name != name.strip():
        raise TransferError(f"invalid file name {name!r}: use a plain base name (no path, not hidden)")
    return name


def wait_reply(transport: Transport, msg_id: Any, types: Container[int], *, what: str,
               timeout: float | None = None, on_progress: ProgressFn | None = None) -> dict[str, Any]:
    """Wait for a message of ``types`` with ``id == msg_id``; ERROR with that id raises :class:`RemoteError`.

    PROGRESS messages with that id go to ``on_progress``; messages of other ids are stale and skipped.
    """
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise LinkError(f"no reply to {what} within {timeout:g}s")
        msg = transport.recv(timeout=left, liveness=True)
        if msg is None:
            continue
        if msg.type == FrameType.HELLO:
            raise LinkError(f"the peer started a new session while waiting for the reply to {what}")
        if msg.type == FrameType.FILE_CHUNK:
            continue
        try:
            body = msg.json()
        except LinkError:
            log.debug("skipping a malformed %s", msg.name)
            continue
        if body.get("id") != msg_id:
            log.debug("skipping a stale %s (id %r)", msg.name, body.get("id"))
            continue
        if msg.type == FrameType.ERROR:
            raise RemoteError(str(body.get("message") or "the peer reported an error"), op=body.get("op"))
        if msg.type == FrameType.PROGRESS:
            if on_progress is not None:
                on_progress({k: v for k, v in body.items() if k != "id"})
            continue
        if msg.type in types:
            return body
        raise LinkError(f"unexpected {msg.name} in reply to {what}")


def _check_interrupt(transport: Transport, msg_id: Any, session: int | None) -> None:
    """Between chunks: stop if the receiver sent ERROR or the session changed."""
    if transport.session_id != session:
        raise LinkError("the session was reset during the file transfer")
    while (msg := transport.poll()) is not None:
        if msg.type == FrameType.HELLO:
            raise LinkError("the peer started a new session during the file transfer")
        if msg.type != FrameType.ERROR:
            continue
        with contextlib.suppress(LinkError):
            body = msg.json()
            if body.get("id") == msg_id:
                raise RemoteError(str(body.get("message") or "the receiver aborted the transfer"), op="put")


def send_file(transport: Transport, path: str | os.PathLike[str], name: str | None = None, *, xfer_id: int,
              meta: dict[str, Any] | None = None, on_progress: BytesProgressFn | None = None,
              timeout: float | None = None) -> TransferResult:
    """Send one file; resumes from the offset the receiver reports.  Returns once the receiver verified it."""
    path = Path(path)
    name = check_name(name or path.name)
    if not path.is_file():
        raise TransferError(f"no such file: {path}")
    size = path.stat().st_size
    sha = sha256_file(path)
    t0 = time.monotonic()
    session = transport.session_id
    transport.send_json(FrameType.FILE_BEGIN, {"id": xfer_id, "name": name, "size": size, "sha256": sha,
                                               "meta": meta or {}})
    reply = wait_reply(transport, xfer_id, {FrameType.FILE_BEGIN}, what=f"FILE_BEGIN of {name}", timeout=timeout)
    offset = reply.get("offset")
    if not isinstance(offset, int) or not 0 <= offset <= size:
        raise TransferError(f"receiver answered an invalid offset {offset!r} for {name} ({size} bytes)")
    chunk = max(1, transport.config.chunk_size)
    sent = 0
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        while pos < size:
            data = f.read(min(chunk, size - pos))
            if not data:
                raise TransferError(f"{path} shrank while it was being sent")
            transport.send(FrameType.FILE_CHUNK, CHUNK_HEADER.pack(xfer_id & 0xFFFFFFFF, pos) + data)
            pos += len(data)
            sent += len(data)
            _check_interrupt(transport, xfer_id, session)
            if on_progress is not None:
                on_progress(pos, size)
    transport.send_json(FrameType.FILE_END, {"id": xfer_id, "size": size, "sha256": sha})
    final = wait_reply(transport, xfer_id, {FrameType.RESPONSE}, what=f"FILE_END of {name}", timeout=timeout)
    result = final.get("result")
    return TransferResult(name=name, size=size, sha256=sha, resumed_from=offset, bytes_sent=sent,
                          seconds=time.monotonic() - t0, result=result if isinstance(result, dict) else {})


class FileReceiver:
    """Receives one file at a time into ``dest_dir`` via ``staging_dir`` (default ``dest_dir/.partial``)."""

    def __init__(self, dest_dir: str | os.PathLike[str], staging_dir: str | os.PathLike[str] | None = None, *,
                 record_every: int = 64 * 1024, max_size: int | None = None):
        self.dest_dir = Path(dest_dir)
        self.staging_dir = Path(staging_dir) if staging_dir is not None else self.dest_dir / ".partial"
        self.record_every = record_every
        self.max_size = max_size
        self._f: Any = None
        self.name = ""
        self.size = 0
        self.sha256 = ""
        self.xfer_id: Any = None
        self.offset = 0
        self.resumed_from = 0
        self._since_record = 0

    @property
    def active(self) -> bool:
        return self._f is not None

    def paths(self, sha256: str) -> tuple[Path, Path]:
        """(partial file, offset record) for a sha256."""
        return self.staging_dir / f"{sha256}.part", self.staging_dir / f"{sha256}.json"

    def begin(self, meta: dict[str, Any]) -> int:
        """Start (or resume) a transfer; returns the offset the sender must continue from."""
        if self.active:
            self.abort()
        name = check_name(meta.get("name"))
        size, sha = meta.get("size"), meta.get("sha256")
        if not isinstance(size, int) or size < 0:
            raise TransferError(f"invalid size {size!r} for {name}")
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise TransferError(f"invalid sha256 {sha!r} for {name}")
        if self.max_size is not None and size > self.max_size:
            raise TransferError(f"{name} is {size} bytes, more than the limit of {self.max_size}")
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        part, record = self.paths(sha)
        offset = 0
        if part.exists() and record.exists():
            try:
                rec = json.loads(record.read_text())
                if rec.get("sha256") == sha and rec.get("size") == size:
                    offset = max(0, min(int(rec.get("offset", 0)), part.stat().st_size, size))
            except (OSError, ValueError, TypeError, AttributeError):
                offset = 0
        f = open(part, "r+b" if offset else "wb")  # kept open across chunks
        f.truncate(offset)
        f.seek(offset)
        self._f = f
        self.name, self.size, self.sha256, self.xfer_id = name, size, sha, meta.get("id")
        self.offset = self.resumed_from = offset
        self._since_record = 0
        self._write_record()
        if offset:
            log.info("resuming %s at %d/%d bytes", name, offset, size)
        return offset

    def write_chunk(self, payload: bytes) -> int:
        """Append one FILE_CHUNK payload; returns the new offset."""
        if not self.active:
            raise TransferError("no file transfer in progress")
        if len(payload) < CHUNK_HEADER.size:
            raise TransferError("truncated FILE_CHUNK")
        xid, offset = CHUNK_HEADER.unpack_from(payload)
        if not isinstance(self.xfer_id, int) or xid != self.xfer_id & 0xFFFFFFFF:
            raise TransferError(f"FILE_CHUNK of another transfer ({xid})")
        if offset != self.offset:
            raise TransferError(f"FILE_CHUNK at offset {offset}, expected {self.offset}")
        data = memoryview(payload)[CHUNK_HEADER.size:]
        if self.offset + len(data) > self.size:
            raise TransferError(f"{self.name}: more data than the announced {self.size} bytes")
        self._f.write(data)
        self.offset += len(data)
        self._since_record += len(data)
        if self._since_record >= self.record_every:
            self._checkpoint()
        return self.offset

    def finish(self, end: dict[str, Any]) -> Path:
        """Verify size and whole-file sha256, then move the file to ``dest_dir/name``."""
        if not self.active:
            raise TransferError("no file transfer in progress")
        if end.get("sha256") != self.sha256 or end.get("size") != self.size:
            self.abort()
            raise TransferError(f"{self.name}: FILE_END does not match FILE_BEGIN")
        if self.offset != self.size:
            self.abort()
            raise TransferError(f"{self.name}: incomplete, {self.offset} of {self.size} bytes received")
        f, self._f = self._f, None
        f.flush()
        os.fsync(f.fileno())
        f.close()
        part, record = self.paths(self.sha256)
        actual = sha256_file(part)
        if actual != self.sha256:
            for p in (part, record):
                p.unlink(missing_ok=True)
            raise TransferError(f"{self.name}: sha256 mismatch (got {actual[:12]}..., expected "
                                f"{self.sha256[:12]}...); partial file discarded, send it again")
        dest = self.dest_dir / self.name
        os.replace(part, dest)
        record.unlink(missing_ok=True)
        return dest

    def abort(self) -> None:
        """Stop the current transfer, keeping the partial file and its offset record for a resume."""
        if self._f is None:
            return
        try:
            self._checkpoint()
        except OSError as exc:
            log.warning("could not save the resume point of %s: %s", self.name, exc)
        finally:
            f, self._f = self._f, None
            f.close()

    def discard(self) -> None:
        """Stop the current transfer and delete its partial file."""
        if self._f is None:
            return
        f, self._f = self._f, None
        f.close()
        for p in self.paths(self.sha256):
            p.unlink(missing_ok=True)

    def _checkpoint(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._write_record()
        self._since_record = 0

    def _write_record(self) -> None:
        _, record = self.paths(self.sha256)
        rec = {"name": self.name, "size": self.size, "sha256": self.sha256, "offset": self.offset,
               "updated": time.time()}
        atomic_write_bytes(record, json.dumps(rec).encode())


@dataclass
class ReceiveOutcome:
    """How :func:`receive_file` ended: ``path`` is set when the file was verified and moved in place."""

    meta: dict[str, Any]
    path: Path | None = None
    resumed_from: int = 0
    error: str | None = None  # sent to the peer as ERROR
    interrupted_by: Message | None = None  # a message that ended the transfer early (HELLO, BYE, REQUEST...)


def receive_file(transport: Transport, begin: dict[str, Any], receiver: FileReceiver, *,
                 liveness: bool = False, idle_timeout: float | None = None, stop: threading.Event | None = None,
                 on_progress: BytesProgressFn | None = None) -> ReceiveOutcome:
    """Serve one incoming transfer after its FILE_BEGIN.  The caller sends the final RESPONSE on success.

    On any failure an ERROR goes to the sender and the partial file is kept for a resume
    (unless its sha256 turned out wrong).  A message that is not part of the transfer ends
    it and is handed back in ``interrupted_by`` for the caller to handle.
    """
    xid = begin.get("id")
    out = ReceiveOutcome(meta=begin)
    try:
        out.resumed_from = receiver.begin(begin)
    except (TransferError, OSError) as exc:
        out.error = str(exc)
        transport.send_json(FrameType.ERROR, {"id": xid, "op": "put", "message": out.error})
        return out
    try:
        transport.send_json(FrameType.FILE_BEGIN, {"id": xid, "offset": out.resumed_from})
        last = time.monotonic()
        while True:
            if stop is not None and stop.is_set():
                out.error = "stopped"
                return out
            msg = transport.recv(timeout=0.25, liveness=liveness)
            now = time.monotonic()
            if msg is None:
                if idle_timeout is not None and now - last > idle_timeout:
                    out.error = f"no data for {idle_timeout:g}s"
                    return out
                continue
            last = now
            if msg.type == FrameType.FILE_CHUNK:
                try:
                    pos = receiver.write_chunk(msg.payload)
                except (TransferError, OSError) as exc:
                    out.error = f"{receiver.name or 'transfer'}: {exc}"
                    transport.send_json(FrameType.ERROR, {"id": xid, "op": "put", "message": out.error})
                    return out
                if on_progress is not None:
                    on_progress(pos, receiver.size)
            elif msg.type == FrameType.FILE_END:
                try:
                    out.path = receiver.finish(msg.json())
                except (TransferError, OSError, LinkError) as exc:
                    out.error = str(exc)
                    transport.send_json(FrameType.ERROR, {"id": xid, "op": "put", "message": out.error})
                return out
            else:
                out.interrupted_by = msg
                out.error = f"interrupted by {msg.name}"
                return out
    finally:
        receiver.abort()  # no-op after finish(); otherwise keeps the resume point
