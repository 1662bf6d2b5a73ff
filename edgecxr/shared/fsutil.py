"""Atomic file writes and hashing.

Every result the toolkit writes goes through here: a temp file in the same
directory, fsync, then ``os.replace``.  An interrupted run never leaves a
half-written file and never clobbers an earlier result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder, so that a rename or link in it survives a power cut (not only ``kill -9``)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: int | None = None, durable: bool = False) -> Iterator[Any]:
    """Write ``path`` through a binary file object: a temp file in the same folder, fsync, rename.
    On any error the temp file goes and ``path`` keeps what it had. ``mode``: the file's permissions
    (default 0o666 less the umask); ``durable``: also fsync the folder after the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None, durable: bool = False) -> None:
    with atomic_file(path, mode, durable) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths into plain JSON types."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and (obj != obj):  # NaN -> null
        return None
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent, sort_keys=False) + "\n")


def atomic_append_line(path: str | Path, line: str) -> None:
    """Append one line to a file: one ``write`` under an exclusive ``flock``, then fsync.

    Any number of processes may append to the same file at once (two benches, a bench and
    ``remote bench``): each record lands whole, none is lost.  A record counts once its newline is
    written; :func:`read_lines` ignores an unterminated tail, so a reader never sees a half-written
    line, and the next append removes such a tail left by a writer that died mid-write (a tail that
    is itself a complete JSON value, e.g. a hand-edited file without a final newline, is kept).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = line.rstrip("\n").encode("utf-8") + b"\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            _mend_tail(fd, size)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def _mend_tail(fd: int, size: int) -> None:
    """The file does not end in a newline: terminate a complete JSON tail, drop a torn one."""
    start = max(0, size - (1 << 22))
    buf = os.pread(fd, size - start, start)
    cut = buf.rfind(b"\n")
    if cut < 0 and start > 0:
        os.write(fd, b"\n")  # a tail longer than 4 MiB is not a torn record: keep it
        return
    tail_at = start + cut + 1
    try:
        json.loads(buf[cut + 1:])
        os.write(fd, b"\n")
    except ValueError:
        os.ftruncate(fd, tail_at)


def read_lines(path: str | Path) -> list[str]:
    """The complete lines of an append-only file (shared lock; an unterminated tail is not a line yet)."""
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", errors="replace").splitlines()


@contextlib.contextmanager
def atomic_dir(final: str | Path, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temp sibling, then move it into place.

    If ``final`` exists and ``force`` is false, the caller must have refused
    earlier; here we refuse again to be safe.  On error the temp dir is removed
    and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not force:
        raise FileExistsError(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_tar(entries: list[tuple[str, Path]], archive: str | Path) -> Path:
    """The one deterministic tar writer: ``(name in the archive, file)`` pairs, sorted by name, PAX
    format, owner 0 with no names, mtime 0, mode 0644, so the same files give the same bytes (a
    re-push resumes, a digest pins it); written to a temp file and renamed into place."""
    import tarfile

    archive = Path(archive)
    with atomic_file(archive) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(entries, key=lambda e: e[0]):
            ti = tar.gettarinfo(str(path), arcname=name)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = 0
            ti.mode = 0o644
            with open(path, "rb") as src:
                tar.addfile(ti, src)
    return archive


def portable_path(path: str | Path) -> str:
    """A path as it may appear in a record that travels between machines: relative to the working
    folder when under it, ``~/...`` under the home folder, otherwise its last two parts after ``.../``
    (never the absolute layout of the machine that ran it)."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + p.relative_to(base).as_posix()
        except ValueError:
            pass
    return ".../" + "/".join(p.parts[-2:])
