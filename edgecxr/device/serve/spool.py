"""The spool: every received instance on disk, durably, before its C-STORE success goes back.

Layout under the spool folder::

    incoming/000000000042.dcm   received, not yet read (sequence number = arrival order)
    done/000000000042.dcm       read (or refused); its result is durable
    sr/<SR UID>.dcm             the reports written
    outbox/<seq>-<SR UID>.dcm   reports not yet delivered to the PACS (hard links into sr/)
    sources/<source UID>.json   one record per source instance that got a reading (exactly one SR)
    results.jsonl               one JSON line per instance (UIDs only, no patient name)

A write is a temp file in ``incoming/`` (a dot name the worker never takes), fsync of the file,
rename, fsync of the folder: after that the instance survives ``kill -9`` and a power cut, and only
then does the receiver answer 0x0000.  Before writing, the size of what waits in ``incoming/`` plus
this instance is compared with the limit; over it, nothing is written and the receiver answers
0xA700 (out of resources).  A disk that fills during the write removes the temp file, same answer.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

from edgecxr.shared.fsutil import atomic_write_bytes, fsync_dir

SEQ_RE = re.compile(r"^(\d{12})\.dcm$")


class SpoolFull(Exception):
    """No room for this instance (the size limit or the disk): the C-STORE answer is 0xA700."""


def durable_write(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename, fsync the folder; readable by the node's user and group only."""
    atomic_write_bytes(path, data, mode=0o640, durable=True)


class Spool:
    def __init__(self, root: str | Path, limit_bytes: int):
        self.root = Path(root)
        self.limit = int(limit_bytes)
        self.incoming, self.done = self.root / "incoming", self.root / "done"
        self.sr, self.outbox, self.sources = self.root / "sr", self.root / "outbox", self.root / "sources"
        for d in (self.root, self.incoming, self.done, self.sr, self.outbox, self.sources):
            d.mkdir(parents=True, exist_ok=True)
        self.recv = self.root / "recv"  # where pynetdicom writes an instance while it arrives (same disk)
        self.recv.mkdir(exist_ok=True)
        for p in self.recv.iterdir():  # what a killed process was receiving: never acknowledged
            with contextlib.suppress(OSError):
                p.unlink()
        self.results = self.root / "results.jsonl"
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        # temp files of a writer that died before its rename: never acknowledged, so never read
        for p in self.incoming.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self._seq = max((int(m.group(1)) for d in (self.incoming, self.done) for p in d.iterdir()
                         if (m := SEQ_RE.match(p.name))), default=0)
        self._pending = sum(p.stat().st_size for p in self.pending())
        self._doors: dict[int, str] = {}  # which door an instance came in by, this run (after a restart: dicom)

    def pending(self) -> list[Path]:
        """Spooled instances not yet read, in arrival order."""
        return sorted(p for p in self.incoming.iterdir() if SEQ_RE.match(p.name))

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def door(self, seq: int) -> str:
        return self._doors.get(seq, "dicom")

    def _reserve(self, size: int, door: str) -> Path:
        """The next sequence number's path, its bytes counted against the limit (SpoolFull when over)."""
        with self._lock:
            if self._pending + size > self.limit:
                raise SpoolFull(f"spool holds {self._pending} bytes; {size} more is over the limit of {self.limit}")
            self._seq += 1
            if door != "dicom":
                self._doors[self._seq] = door
            self._pending += size  # reserved while writing, so parallel associations cannot overshoot
            return self.incoming / f"{self._seq:012d}.dcm"

    def _release(self, size: int) -> None:
        with self._lock:
            self._pending -= size

    def _arrival(self) -> None:
        with self._arrived:
            self._arrived.notify_all()

    def put(self, data: bytes, door: str = "dicom") -> Path:
        """Store one received instance (preamble, file meta and dataset); raise SpoolFull if no room."""
        path = self._reserve(len(data), door)
        try:
            durable_write(path, data)
        except OSError as e:
            self._release(len(data))
            raise SpoolFull(f"cannot write to the spool ({e.strerror or e})") from None
        self._arrival()
        return path

    def adopt(self, received: Path, door: str = "dicom") -> Path:
        """Take a file received on disk (in ``recv/``, pynetdicom's chunked receive) into the spool: the
        limit checked, the file fsynced and renamed into ``incoming/``, the folder fsynced. SpoolFull: the
        file is removed, nothing is spooled."""
        size = received.stat().st_size
        try:
            path = self._reserve(size, door)
        except SpoolFull:
            with contextlib.suppress(OSError):
                received.unlink()
            raise
        try:
            fd = os.open(received, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(received, 0o640)
            os.rename(received, path)
            fsync_dir(self.incoming)
        except OSError as e:
            self._release(size)
            with contextlib.suppress(OSError):
                received.unlink()
            raise SpoolFull(f"cannot move into the spool ({e.strerror or e})") from None
        self._arrival()
        return path

    def wait_unless(self, ready, timeout: float) -> None:
        """Wait for an arrival or a wake(), unless ``ready()`` already holds (checked under the lock, so a
        wake() between the check and the wait is not lost)."""
        with self._arrived:
            if not ready():
                self._arrived.wait(timeout)

    def wake(self) -> None:
        self._arrival()

    def finish(self, path: Path) -> None:
        """The instance's result is durable: move it from incoming/ to done/."""
        size = path.stat().st_size
        os.replace(path, self.done / path.name)
        fsync_dir(self.incoming)
        fsync_dir(self.done)
        with self._lock:
            self._pending = max(0, self._pending - size)
            self._doors.pop(int(path.stem), None)

    def prune_done(self, keep: int) -> None:
        """Keep the newest ``keep`` read instances in done/ (0: keep none)."""
        old = sorted(p for p in self.done.iterdir() if SEQ_RE.match(p.name))
        for p in old[:max(0, len(old) - keep)]:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
