"""The session handshake of the link: HELLO / HELLO_ACK, session ids (nonces), version and role checks.

The host sends HELLO (protocol version, role, tool version, a nonce and its initial sequence
number); the agent checks the version and role and answers HELLO_ACK (accepted, or refused with
a one-line reason).  No I/O and no locks: :class:`~edgecxr.device.link.transport.Transport` calls
:class:`Handshake` under its lock, writes the frames it returns and installs the session it opens.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, NamedTuple

from edgecxr.device.link.config import LinkConfig
from edgecxr.device.link.framing import MAX_SEQ, Frame, FrameType, encode_frame
from edgecxr.device.link.message import dumps, loads_dict

log = logging.getLogger("edgecxr.device.link")


@dataclass
class Session:
    nonce: int
    peer: dict[str, Any]
    initiator: bool
    window: int
    fragment_size: int
    seq0: int = 0  # our first data sequence number
    peer_seq0: int = 0  # the peer's first data sequence number
    ack_frame: bytes | None = None  # responder: our HELLO_ACK, re-sent on a duplicate HELLO


@dataclass
class HelloWait:
    nonce: int
    seq0: int
    reply: dict[str, Any] | None = None


class HelloAnswer(NamedTuple):
    """What to do about a HELLO: write ``frame``; install ``session`` when it is not None."""

    frame: bytes
    session: Session | None = None
    repeat: bool = False  # our HELLO_ACK again, for the session we already have


class Handshake:
    """Who this end is (role, info), the current session, the HELLO we wait on, and the last refusal."""

    def __init__(self, config: LinkConfig, role: str, info: dict[str, Any]):
        self.config = config
        self.role = role
        self.info = info
        self.session: Session | None = None
        self.wait: HelloWait | None = None
        self.last_refusal: str | None = None

    def hello_frame(self) -> tuple[bytes, HelloWait]:
        """Our HELLO (a fresh nonce and initial sequence number) and the wait for its answer."""
        cfg = self.config
        nonce = random.randrange(1, MAX_SEQ)
        seq0 = random.randrange(0, 1 << 30)
        body = {"proto": cfg.protocol_version, "role": self.role, "tool": cfg.tool_version, "nonce": nonce,
                "seq0": seq0, "max_payload": cfg.max_payload, "window": cfg.window, "info": self.info}
        frame = encode_frame(FrameType.HELLO, dumps(body), seq=nonce, version=cfg.protocol_version)
        return frame, HelloWait(nonce=nonce, seq0=seq0)

    def mismatch(self, peer_proto: Any, peer_tool: Any, peer_role: Any) -> str:
        cfg = self.config
        return (f"link protocol version mismatch: this {self.role} speaks protocol {cfg.protocol_version} "
                f"({cfg.tool_version}), the {peer_role or 'peer'} speaks protocol {peer_proto} "
                f"({peer_tool or 'unknown tool'}); install the same edgecxr release on the host and the board")

    def answer_hello(self, f: Frame) -> HelloAnswer | None:
        """Our answer to the peer's HELLO ``f``, or None when it is to be ignored (we are opening one ourselves)."""
        cfg = self.config
        body = loads_dict(f.payload)
        nonce = f.seq
        s = self.session
        if s is not None and not s.initiator and s.nonce == nonce and s.ack_frame is not None:
            return HelloAnswer(s.ack_frame, repeat=True)  # our HELLO_ACK was lost: say it again, keep the session
        if self.wait is not None:
            return None
        peer_proto = body.get("proto", f.version)
        reply: dict[str, Any] = {"proto": cfg.protocol_version, "role": self.role, "tool": cfg.tool_version,
                                 "nonce": nonce, "max_payload": cfg.max_payload, "window": cfg.window,
                                 "info": self.info}
        error = None
        if f.version != cfg.protocol_version or peer_proto != cfg.protocol_version:
            error = self.mismatch(peer_proto if peer_proto != cfg.protocol_version else f.version,
                                  body.get("tool"), body.get("role"))
        elif body.get("role") == self.role:
            error = f"both ends of the link say they are the {self.role}; connect an agent to a host"
        elif not isinstance(body.get("seq0"), int) or not isinstance(body.get("max_payload"), int):
            error = "malformed HELLO (missing seq0/max_payload)"
        if error is not None:
            reply.update(accepted=False, error=error)
            self.last_refusal = error
            log.warning("refused a session: %s", error)
            return HelloAnswer(encode_frame(FrameType.HELLO_ACK, dumps(reply), seq=nonce,
                                            version=cfg.protocol_version))
        seq0 = random.randrange(0, 1 << 30)
        reply.update(accepted=True, seq0=seq0)
        ack = encode_frame(FrameType.HELLO_ACK, dumps(reply), seq=nonce, version=cfg.protocol_version)
        session = self._session(nonce, body, initiator=False, seq0=seq0)
        session.ack_frame = ack
        return HelloAnswer(ack, session)

    def check_hello_ack(self, f: Frame) -> Session | None:
        """Settle the wait with the peer's HELLO_ACK ``f``; the session it opens, or None (refused or not ours)."""
        cfg = self.config
        wait = self.wait
        if wait is None or f.seq != wait.nonce or wait.reply is not None:
            return None
        body = loads_dict(f.payload)
        peer_proto = body.get("proto", f.version)
        if not body.get("accepted", False):
            wait.reply = {"accepted": False, "error": body.get("error") or "the peer refused the handshake"}
        elif peer_proto != cfg.protocol_version or f.version != cfg.protocol_version:
            wait.reply = {"accepted": False, "error": self.mismatch(peer_proto, body.get("tool"), body.get("role"))}
        elif body.get("role") == self.role:
            wait.reply = {"accepted": False,
                          "error": f"both ends of the link say they are the {self.role}; connect a host to an agent"}
        elif not isinstance(body.get("seq0"), int) or not isinstance(body.get("max_payload"), int):
            wait.reply = {"accepted": False, "error": "malformed HELLO_ACK from the peer"}
        else:
            wait.reply = dict(body)
            return self._session(wait.nonce, body, initiator=True, seq0=wait.seq0)
        return None

    def _session(self, nonce: int, body: dict[str, Any], *, initiator: bool, seq0: int) -> Session:
        cfg = self.config
        return Session(nonce=nonce, peer=body, initiator=initiator, window=_peer_window(body, cfg.window),
                       fragment_size=min(cfg.fragment_size, max(256, int(body["max_payload"]))),
                       seq0=seq0, peer_seq0=int(body["seq0"]))


def _peer_window(body: dict[str, Any], ours: int) -> int:
    w = body.get("window")
    return max(1, min(ours, w)) if isinstance(w, int) else ours
