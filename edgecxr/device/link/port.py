"""Opening a serial line (a device path or a pyserial URL) for the link; pyserial is imported only here, on use."""

from __future__ import annotations

import os
from typing import Any

from edgecxr.device.link.errors import LinkError


def open_port(url_or_path: str | os.PathLike[str], baud: int = 115200, timeout: float = 0.05) -> Any:
    """Open ``/dev/ttyUSB0``, ``COM3``, ``loop://``, ``socket://host:port``, ``rfc2217://...`` with pyserial.

    ``write_timeout`` is set so that a line nobody drains fails the session instead of hanging it.
    """
    import serial

    url = os.fspath(url_or_path)
    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=timeout,
                                     write_timeout=10.0 + 65536 * 10.0 / baud)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise LinkError(f"cannot open {url} at {baud} baud: {exc}") from None
