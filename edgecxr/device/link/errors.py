"""Errors of the serial link.  All are one-line :class:`edgecxr.shared.errors.EdgeCXRError` s."""

from __future__ import annotations

from edgecxr.shared.errors import EdgeCXRError


class LinkError(EdgeCXRError):
    """The link is unusable: the peer stopped answering, refused the handshake, or the port failed."""

    exit_code = 3


class ProtocolMismatch(LinkError):
    """The peer speaks another link protocol version (or is not the expected role)."""


class RemoteError(EdgeCXRError):
    """The agent answered a request with ERROR (a handler failed, a file was rejected...)."""

    def __init__(self, message: str, op: str | None = None):
        self.op = op
        super().__init__(message)


class TransferError(EdgeCXRError):
    """A file transfer was refused or failed verification."""
