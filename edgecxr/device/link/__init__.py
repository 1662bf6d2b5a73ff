"""Serial link between a host (``edgecxr remote``) and a board (``edgecxr agent``).

Layers: :mod:`.framing` (bytes <-> frames, no I/O), :mod:`.transport` (reliable ordered
messages, handshake), :mod:`.files` (chunked transfer with resume), :mod:`.agent` and
:mod:`.remote` (the two ends), :mod:`.host` (push, ensure, remote bench and predict as a library).
A pty cable and a fault-injecting relay for tests live in ``tests/link/``.
Device side: pyserial only, no torch.
"""

from __future__ import annotations

import os
from typing import Any

from edgecxr.device.link.agent import Agent, Handler, device_facts
from edgecxr.device.link.errors import LinkError, ProtocolMismatch, RemoteError, TransferError
from edgecxr.device.link.files import FileReceiver, TransferResult, send_file
from edgecxr.device.link.framing import PROTOCOL_VERSION, Decoder, Frame, FrameType, encode_frame
from edgecxr.device.link.remote import RemoteClient
from edgecxr.device.link.transport import LinkConfig, Message, Transport

__all__ = [
    "PROTOCOL_VERSION",
    "Agent",
    "Decoder",
    "FileReceiver",
    "Frame",
    "FrameType",
    "Handler",
    "LinkConfig",
    "LinkError",
    "Message",
    "ProtocolMismatch",
    "RemoteClient",
    "RemoteError",
    "TransferError",
    "TransferResult",
    "Transport",
    "device_facts",
    "encode_frame",
    "open_port",
    "send_file",
]


def open_port(url_or_path: str | os.PathLike[str], baud: int = 115200, timeout: float = 0.05) -> Any:
    """Open ``/dev/ttyUSB0``, ``COM3``, ``loop://``, ``socket://host:port``, ``rfc2217://...`` with pyserial.

    ``write_timeout`` is set so that a line nobody drains fails the session instead of hanging it.
    """
    import serial

    from edgecxr.device.link.errors import LinkError as _LinkError

    url = os.fspath(url_or_path)
    try:
        return serial.serial_for_url(url, baudrate=baud, timeout=timeout,
                                     write_timeout=10.0 + 65536 * 10.0 / baud)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise _LinkError(f"cannot open {url} at {baud} baud: {exc}") from None
