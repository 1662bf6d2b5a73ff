"""Test tooling: a pty pair is a serial cable on one machine (moved out of the package: a board never needs it).

:class:`PtyPort` is a pyserial-like port over a pty file descriptor; :func:`pty_pair` gives both
ends. The fault-injecting relay in :mod:`tests.link.faults` sits between two such pairs.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import time


class PtyPort:
    """A pyserial-like port over a file descriptor (a pty master or slave, or a tty path).

    ``read(n)`` waits up to ``timeout`` seconds for data and returns what is there (at most
    ``n`` bytes, possibly fewer, ``b""`` on timeout), which is what the transport's reader
    wants.  The terminal is put in raw mode (no echo, no CR/LF translation).  ``baudrate``
    is informational: a pty moves bytes as fast as they are read.
    """

    def __init__(self, fd_or_path: int | str | os.PathLike[str], *, timeout: float | None = 0.05,
                 baudrate: int | None = None, raw: bool = True, write_timeout: float | None = 10.0,
                 own_fd: bool | None = None):
        if isinstance(fd_or_path, int):
            self.fd = fd_or_path
            self._own = bool(own_fd)
            self.name = _tty_name(fd_or_path)
        else:
            self.fd = os.open(os.fspath(fd_or_path), os.O_RDWR | os.O_NOCTTY)
            self._own = True if own_fd is None else own_fd
            self.name = os.fspath(fd_or_path)
        if raw and os.isatty(self.fd):
            import termios
            import tty

            tty.setraw(self.fd, termios.TCSANOW)
        os.set_blocking(self.fd, False)
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.baudrate = baudrate
        self.is_open = True

    def fileno(self) -> int:
        return self.fd

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise OSError(errno.EBADF, "port closed")
        if size <= 0:
            return b""
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # the other side of the pty is closed: behave like a silent line
                time.sleep(self.timeout or 0.05)
                return b""
            raise

    def write(self, data: bytes) -> int:
        if not self.is_open:
            raise OSError(errno.EBADF, "port closed")
        view = memoryview(bytes(data))
        end = None if self.write_timeout is None else time.monotonic() + self.write_timeout
        while view:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"write to {self.name} timed out")
            # Some kernels never report a pty writable although os.write would succeed:
            # wait briefly, then try the write anyway.
            select.select([], [self.fd], [], 0.05 if left is None else max(0.0, min(left, 0.05)))
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                continue
            view = view[n:]
        return len(data)

    @property
    def in_waiting(self) -> int:
        import fcntl
        import termios

        try:
            buf = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return struct.unpack("i", buf)[0]

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        import termios

        if os.isatty(self.fd):
            termios.tcflush(self.fd, termios.TCIFLUSH)

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            if self._own:
                os.close(self.fd)

    def __enter__(self) -> PtyPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PtyPort({self.name!r})"


def _tty_name(fd: int) -> str:
    try:
        return os.ttyname(fd)
    except OSError:
        return f"fd{fd}"


def pty_pair(timeout: float | None = 0.05) -> tuple[PtyPort, PtyPort]:
    """Two connected raw ports (pty master, pty slave): a cable on one machine.  Both own their fd."""
    master, slave = os.openpty()
    slave_port = PtyPort(slave, timeout=timeout, own_fd=True)  # raw mode set on the slave = the whole pty
    master_port = PtyPort(master, timeout=timeout, raw=False, own_fd=True)
    master_port.name = f"{slave_port.name} (master)"
    return master_port, slave_port
