"""The host side of the link: ``RemoteClient(port)`` talks to an :class:`~edgecxr.device.link.agent.Agent`."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from edgecxr.device.link.errors import LinkError, TransferError
from edgecxr.device.link.files import (
    BytesProgressFn,
    FileReceiver,
    ProgressFn,
    TransferResult,
    receive_file,
    send_file,
    wait_reply,
)
from edgecxr.device.link.framing import FrameType
from edgecxr.device.link.port import open_port
from edgecxr.device.link.transport import BytePort, LinkConfig, Transport

log = logging.getLogger("edgecxr.device.link")


class RemoteClient:
    """Requests, pushes and pulls over one port.  Connects (HELLO) on first use; use as a context manager."""

    def __init__(self, port: BytePort | str | os.PathLike[str], *, config: LinkConfig | None = None,
                 baud: int = 115200, info: dict[str, Any] | None = None):
        self._own_port = isinstance(port, (str, os.PathLike))
        if self._own_port:
            port = open_port(port, baud)
        self.port = port
        self.transport = Transport(port, config, role="host", info=info)
        self.peer: dict[str, Any] | None = None
        self._ids = itertools.count(random.randrange(1, 1 << 24))

    # ------------------------------------------------------------------ session
    def hello(self) -> dict[str, Any]:
        """Open a session; returns the agent's HELLO_ACK (proto, role, tool, info).  Raises LinkError."""
        self.peer = self.transport.hello()
        return self.peer

    def _ensure(self) -> None:
        if not self.transport.connected:
            self.hello()

    def bye(self, shutdown: bool = False) -> None:
        """End the session (``shutdown=True`` also stops the agent's serve loop)."""
        if not self.transport.connected:
            return
        self.transport.send_json(FrameType.BYE, {"shutdown": shutdown})
        try:
            self.transport.flush(timeout=self.transport.dead_after)
        finally:
            self.transport.end_session()

    def close(self) -> None:
        self.transport.close()
        if self._own_port:
            self.port.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(LinkError):
            self.bye()
        self.close()

    # ------------------------------------------------------------------ requests
    def request(self, op: str, params: dict[str, Any] | None = None, on_progress: ProgressFn | None = None,
                timeout: float | None = None) -> dict[str, Any]:
        """Run ``op`` on the agent; returns its result dict.

        Raises :class:`RemoteError` (the agent's one-line error), or :class:`LinkError` when the
        link dies (the agent is probed while it works, so a long op is fine) or after ``timeout``.
        """
        self._ensure()
        rid = next(self._ids)
        self.transport.send_json(FrameType.REQUEST, {"id": rid, "op": op, "params": params or {}})
        body = wait_reply(self.transport, rid, {FrameType.RESPONSE}, what=f"request '{op}'", timeout=timeout,
                          on_progress=on_progress)
        result = body.get("result")
        return result if isinstance(result, dict) else {}

    def ping(self) -> float:
        """Round-trip time of a ``ping`` request, in seconds."""
        t0 = time.monotonic()
        self.request("ping")
        return time.monotonic() - t0

    def info(self) -> dict[str, Any]:
        return self.request("info")

    def list(self) -> list[dict[str, Any]]:
        files = self.request("list").get("files")
        return files if isinstance(files, list) else []

    # ------------------------------------------------------------------ files
    def push(self, path: str | os.PathLike[str], name: str | None = None, meta: dict[str, Any] | None = None,
             on_progress: BytesProgressFn | None = None, timeout: float | None = None) -> TransferResult:
        """Send a file to the agent (resuming an interrupted push of the same content).

        ``result.result`` holds what the agent's ``on_file_received`` hook returned; a rejection
        raises :class:`RemoteError`.
        """
        self._ensure()
        return send_file(self.transport, path, name, xfer_id=next(self._ids), meta=meta, on_progress=on_progress,
                         timeout=timeout)

    def pull(self, name: str, dest_dir: str | os.PathLike[str], on_progress: BytesProgressFn | None = None,
             timeout: float | None = None) -> Path:
        """Fetch ``name`` (a path relative to the agent's store) into ``dest_dir``; resumes too."""
        self._ensure()
        rid = next(self._ids)
        self.transport.send_json(FrameType.REQUEST, {"id": rid, "op": "get", "params": {"name": name}})
        begin = wait_reply(self.transport, rid, {FrameType.FILE_BEGIN}, what=f"get '{name}'", timeout=timeout)
        receiver = FileReceiver(dest_dir)
        outcome = receive_file(self.transport, begin, receiver, liveness=True, on_progress=on_progress)
        if outcome.path is None:
            raise TransferError(f"pull {name}: {outcome.error or 'interrupted'}")
        self.transport.send_json(FrameType.RESPONSE, {"id": rid, "ok": True, "result": {"path": str(outcome.path)}})
        wait_reply(self.transport, rid, {FrameType.RESPONSE}, what=f"get '{name}'", timeout=timeout)
        return outcome.path
