"""The board side of the link: ``Agent(port, store_dir, handlers).serve()``.

One session at a time, one request at a time.  Built-in ops:

* ``ping``  -- ``{"pong": true, "time": ..., "echo": params.get("echo")}``
* ``info``  -- device facts (platform, machine, python, cpu count, hostname, edgecxr version, ops),
  plus whatever ``info_extra()`` returns (the board service adds its device name and bundles)
* ``list``  -- files in the store (``{"files": [{"name", "size", "mtime"}]}``), staging excluded
* ``put``   -- a file transfer (``RemoteClient.push``): received into ``store/incoming`` via
  ``store/incoming/.partial``, sha256-verified, then handed to ``on_file_received(path, meta)``
  which may install it (return a JSON-able dict) or reject it (raise: the file is deleted).
  Without a hook the file is moved to ``store/<name>``.
* ``get``   -- send a store file back to the host (``RemoteClient.pull``), with resume.

Extra ops come from ``handlers``: ``{"bench": fn, "predict": fn}``, each
``fn(params: dict, progress: Callable[[dict], None]) -> dict | None``.  ``progress({...})``
sends a PROGRESS message (rate-limited, except a new ``stage`` or ``final``; never raises).  An exception in a handler or the
hook becomes one ERROR line for the host; the agent keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecxr import __version__
from edgecxr.device.link.errors import LinkError, RemoteError, TransferError
from edgecxr.device.link.files import FileReceiver, ReceiveOutcome, receive_file, send_file
from edgecxr.device.link.framing import FrameType
from edgecxr.device.link.port import open_port
from edgecxr.device.link.transport import BytePort, LinkConfig, Message, Transport, dumps, port_name
from edgecxr.shared.errors import EdgeCXRError

log = logging.getLogger("edgecxr.device.link")

ProgressCallback = Callable[[dict[str, Any]], None]
Handler = Callable[[dict[str, Any], ProgressCallback], "dict[str, Any] | None"]
FileHook = Callable[[Path, dict[str, Any]], "dict[str, Any] | None"]

BUILTIN_OPS = ("get", "info", "list", "ping", "put")
MAX_ERROR_CHARS = 500


def one_line(exc: BaseException, prefix: str = "") -> str:
    """``exc`` as one short line: ``str(err)`` for our own errors, ``Type: message`` otherwise."""
    text = str(exc) if isinstance(exc, EdgeCXRError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS - 3] + "..."
    return f"{prefix}{text}" if prefix else text


def _jsonable(obj: Any) -> Any:
    """``obj`` if JSON can encode it, else converted (numpy scalars/arrays, paths; numpy imported only then)."""
    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        from edgecxr.shared.fsutil import to_jsonable

        return to_jsonable(obj)


def device_facts() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "edgecxr": __version__,
    }


class Agent:
    """Serves one host over ``port`` (a port object, or a path/URL opened with :func:`open_port`)."""

    def __init__(self, port: BytePort | str | os.PathLike[str], store_dir: str | os.PathLike[str],
                 handlers: dict[str, Handler] | None = None, *, on_file_received: FileHook | None = None,
                 config: LinkConfig | None = None, baud: int = 115200, exit_on_bye: bool = False,
                 progress_interval: float = 0.1, idle_timeout: float | None = 600.0,
                 max_file_size: int | None = None, info_extra: Callable[[], dict[str, Any]] | None = None):
        self._own_port = isinstance(port, (str, os.PathLike))
        if self._own_port:
            port = open_port(port, baud)
        self.port = port
        self.store_dir = Path(store_dir)
        self.incoming_dir = self.store_dir / "incoming"
        self.staging_dir = self.incoming_dir / ".partial"
        self.handlers: dict[str, Handler] = {}
        for op, fn in (handlers or {}).items():
            self.register(op, fn)
        self.on_file_received = on_file_received
        self.info_extra = info_extra
        self.exit_on_bye = exit_on_bye
        self.progress_interval = progress_interval
        self.idle_timeout = idle_timeout
        self.transport = Transport(port, config, role="agent", info={"hostname": socket.gethostname()})
        self.receiver = FileReceiver(self.incoming_dir, self.staging_dir, max_size=max_file_size)
        self.sessions = 0
        self.requests = 0
        self.files_received = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public
    def register(self, op: str, fn: Handler) -> None:
        """Add an op handler ``fn(params, progress) -> dict``."""
        if not isinstance(op, str) or not op:
            raise ValueError(f"invalid op name {op!r}")
        if op in BUILTIN_OPS:
            raise ValueError(f"'{op}' is a built-in op of the agent")
        if not callable(fn):
            raise TypeError(f"handler for '{op}' is not callable")
        self.handlers[op] = fn

    @property
    def ops(self) -> list[str]:
        return sorted({*BUILTIN_OPS, *self.handlers})

    def serve(self) -> None:
        """Serve until :meth:`stop` (or a BYE with ``shutdown``).  Raises LinkError only if the port fails."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.transport.start()
        log.info("agent serving on %s, store %s, ops %s", port_name(self.port), self.store_dir, ", ".join(self.ops))
        try:
            while not self._stop.is_set():
                try:
                    msg = self.transport.recv(timeout=0.2)
                    while msg is not None and not self._stop.is_set():
                        msg = self._dispatch(msg)
                except LinkError as exc:
                    if self.transport.port_error:
                        raise
                    log.warning("session lost: %s", exc)
                    self.receiver.abort()
                    if self.transport.failed:  # else a new session already replaced the old one
                        self.transport.end_session()
        finally:
            self.receiver.abort()
            self.transport.close()
            if self._own_port:
                self.port.close()

    def start(self) -> threading.Thread:
        """Run :meth:`serve` in a daemon thread (``self.error`` holds what stopped it, if anything)."""

        def run() -> None:
            try:
                self.serve()
            except BaseException as exc:  # reported through self.error
                self.error = exc
                log.error("agent stopped: %s", exc)

        self._thread = threading.Thread(target=run, name="edgecxr-agent", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ dispatch
    def _dispatch(self, msg: Message) -> Message | None:
        """Handle one message; returns a message that interrupted a transfer, to be handled next."""
        t = msg.type
        if t == FrameType.HELLO:
            self.receiver.abort()
            self.sessions += 1
            peer = self.transport.peer or {}
            log.info("session %d with %s %s", self.sessions, peer.get("role"), peer.get("tool"))
        elif t == FrameType.BYE:
            body = _json_or_empty(msg)
            self.receiver.abort()
            self.transport.end_session()
            if body.get("shutdown") or self.exit_on_bye:
                log.info("BYE: agent stopping")
                self._stop.set()
        elif t == FrameType.REQUEST:
            self._handle_request(msg)
        elif t == FrameType.FILE_BEGIN:
            return self._handle_put(msg)
        elif t == FrameType.FILE_END:
            body = _json_or_empty(msg)
            self._send_error(body.get("id"), "put", "no file transfer in progress (it was aborted); push again")
        else:
            log.debug("ignoring a stray %s", msg.name)
        return None

    def _send_error(self, rid: Any, op: Any, message: str) -> None:
        self.transport.send_json(FrameType.ERROR, {"id": rid, "op": op, "message": message})

    def _handle_request(self, msg: Message) -> None:
        try:
            body = msg.json()
        except LinkError as exc:
            self._send_error(None, None, str(exc))
            return
        rid, op, params = body.get("id"), body.get("op"), body.get("params") or {}
        if not isinstance(op, str) or not isinstance(params, dict):
            self._send_error(rid, op, "malformed request: need {'id', 'op': str, 'params': dict}")
            return
        self.requests += 1
        t0 = time.monotonic()
        try:
            result = self._run_op(rid, op, params)
            payload = dumps({"id": rid, "ok": True, "result": _jsonable(result if result is not None else {}),
                             "seconds": round(time.monotonic() - t0, 6)})
        except LinkError:
            raise
        except (Exception, SystemExit) as exc:  # a handler must never take the agent down
            log.warning("op %s failed: %s", op, one_line(exc))
            self._send_error(rid, op, one_line(exc, f"{op}: "))
            return
        self.transport.send(FrameType.RESPONSE, payload)

    def _run_op(self, rid: Any, op: str, params: dict[str, Any]) -> Any:
        if op == "ping":
            return {"pong": True, "time": time.time(), "echo": params.get("echo")}
        if op == "info":
            extra = self.info_extra() if self.info_extra is not None else {}
            return {**device_facts(), "protocol": self.transport.config.protocol_version,
                    "store": str(self.store_dir), "ops": self.ops, **(extra or {})}
        if op == "list":
            return {"files": self.list_files()}
        if op == "put":
            raise TransferError("'put' is a file transfer: use RemoteClient.push()")
        if op == "get":
            return self._op_get(rid, params)
        fn = self.handlers.get(op)
        if fn is None:
            raise RemoteError(f"unknown op '{op}' (this agent has: {', '.join(self.ops)})")
        result = fn(params, self._progress_callback(rid, op))
        if result is not None and not isinstance(result, dict):
            raise TypeError(f"handler returned {type(result).__name__}, expected a dict")
        return result

    def _progress_callback(self, rid: Any, op: str) -> ProgressCallback:
        last = [0.0]
        last_stage: list[Any] = [None]

        def progress(data: dict[str, Any] | None = None, **fields: Any) -> None:
            body = {**(data or {}), **fields}
            now = time.monotonic()
            stage = body.get("stage")
            new_stage = stage is not None and stage != last_stage[0]
            if now - last[0] < self.progress_interval and not body.get("final") and not new_stage:
                return
            last[0] = now
            last_stage[0] = stage
            try:
                self.transport.send_json(FrameType.PROGRESS, {**_jsonable(body), "id": rid, "op": op})
            except Exception as exc:  # progress is best effort
                log.debug("progress not sent: %s", exc)

        return progress

    def list_files(self) -> list[dict[str, Any]]:
        files = []
        for p in sorted(self.store_dir.rglob("*")):
            if not p.is_file() or self.staging_dir in p.parents:
                continue
            st = p.stat()
            files.append({"name": p.relative_to(self.store_dir).as_posix(), "size": st.st_size,
                          "mtime": round(st.st_mtime, 3)})
        return files

    def _store_path(self, name: Any) -> Path:
        if not isinstance(name, str) or not name:
            raise TransferError("get: params.name is required")
        root = self.store_dir.resolve()
        path = (root / name).resolve()
        if root not in path.parents or self.staging_dir.resolve() in path.parents:
            raise TransferError(f"get: {name!r} is outside the store")
        if not path.is_file():
            raise TransferError(f"get: no file {name!r} in the store")
        return path

    def _op_get(self, rid: Any, params: dict[str, Any]) -> dict[str, Any]:
        path = self._store_path(params.get("name"))
        res = send_file(self.transport, path, path.name, xfer_id=rid,
                        meta={"path": path.relative_to(self.store_dir.resolve()).as_posix()})
        return {"name": res.name, "size": res.size, "sha256": res.sha256, "resumed_from": res.resumed_from,
                "bytes_sent": res.bytes_sent}

    # ------------------------------------------------------------------ put
    def _handle_put(self, msg: Message) -> Message | None:
        try:
            begin = msg.json()
        except LinkError as exc:
            self._send_error(None, "put", str(exc))
            return None
        outcome = receive_file(self.transport, begin, self.receiver, idle_timeout=self.idle_timeout,
                               stop=self._stop)
        if outcome.path is not None:
            self._accept(outcome)
        elif outcome.error:
            log.warning("put %s: %s", begin.get("name"), outcome.error)
        return outcome.interrupted_by

    def _accept(self, outcome: ReceiveOutcome) -> None:
        path = outcome.path
        assert path is not None
        begin = outcome.meta
        meta = {"name": path.name, "size": begin.get("size"), "sha256": begin.get("sha256"),
                "meta": begin.get("meta") if isinstance(begin.get("meta"), dict) else {}}
        hook = self.on_file_received or self._install
        try:
            extra = hook(path, dict(meta))
            if extra is not None and not isinstance(extra, dict):
                raise TypeError(f"on_file_received returned {type(extra).__name__}, expected a dict")
            result = {"name": meta["name"], "size": meta["size"], "sha256": meta["sha256"],
                      "resumed_from": outcome.resumed_from, **_jsonable(extra or {})}
            payload = dumps({"id": begin.get("id"), "ok": True, "result": result})
        except (Exception, SystemExit) as exc:
            path.unlink(missing_ok=True)
            log.warning("rejected %s: %s", meta["name"], one_line(exc))
            self._send_error(begin.get("id"), "put", one_line(exc, f"rejected {meta['name']}: "))
            return
        self.files_received += 1
        self.transport.send(FrameType.RESPONSE, payload)

    def _install(self, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
        dest = self.store_dir / path.name
        os.replace(path, dest)
        return {"installed": dest.relative_to(self.store_dir).as_posix()}


def _json_or_empty(msg: Message) -> dict[str, Any]:
    try:
        return msg.json()
    except LinkError:
        return {}
