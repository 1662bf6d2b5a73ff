"""Serial link between a host (``edgecxr remote``) and a board (``edgecxr agent``).

Layers: :mod:`.port` (opening a serial line), :mod:`.framing` (bytes <-> frames, no I/O),
:mod:`.transport` (reliable ordered messages, handshake), :mod:`.files` (chunked transfer with resume), :mod:`.agent` and
:mod:`.remote` (the two ends), :mod:`.host` (push, ensure, remote bench and predict as a library).
A pty cable and a fault-injecting relay for tests live in ``tests/link/``.
Device side: pyserial only, no torch.
"""

from __future__ import annotations

from edgecxr.device.link.agent import Agent, Handler, device_facts
from edgecxr.device.link.errors import LinkError, ProtocolMismatch, RemoteError, TransferError
from edgecxr.device.link.files import FileReceiver, TransferResult, send_file
from edgecxr.device.link.framing import PROTOCOL_VERSION, Decoder, Frame, FrameType, encode_frame
from edgecxr.device.link.port import open_port
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

