"""One message of the reliable channel, and the compact JSON its control messages use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgecxr.device.link.errors import LinkError
from edgecxr.device.link.framing import FrameType, type_name


@dataclass(frozen=True)
class Message:
    """One message of the reliable channel (a HELLO message is the notice that a peer opened a session)."""

    type: int
    payload: bytes = b""

    @property
    def name(self) -> str:
        return type_name(self.type)

    def json(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise LinkError(f"malformed {self.name} message from the peer: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}") from None
        if not isinstance(obj, dict):
            raise LinkError(f"malformed {self.name} message from the peer: not a JSON object")
        return obj


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def loads_dict(payload: bytes) -> dict[str, Any]:
    """``payload`` as a JSON object, or ``{}`` when it is not one."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def as_type(ftype: int) -> int:
    """``ftype`` as a :class:`FrameType` where it is one (an unknown type stays an int)."""
    try:
        return FrameType(ftype)
    except ValueError:
        return ftype
