"""The HTTP door of ``edgecxr serve``: the Open Inference Protocol, DICOMweb STOW-RS, metrics, a page.

A second door into the same house: the same model, worker, spool, results log and outbox as the
DICOM door. Inference requests are jobs for the worker (a bounded queue: when it is full the answer
is 503 with Retry-After, before anything is decoded); STOW-RS instances go to the spool as C-STOREs
do. Starlette on uvicorn, in a thread of the node's process.

Routes (KServe v2 / OIP REST, DICOMweb, Prometheus)::

    GET  /v2                                 server metadata
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/1]      model metadata (name = the bundle's name)
    GET  /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer
    POST /dicomweb/studies                   STOW-RS
    GET  /metrics                            Prometheus text format
    GET  /                                   the page (drop an image, the latest readings, health)
    GET  /api/readings, /api/node            what the page shows

Inputs of ``infer``: ``image`` (BYTES, shape [N]: encoded files, DICOM, PNG or JPEG, each through the
intake rules and preprocessing of ``predict``), or the manifest's input (its dtype and shape [N, C,
S, S], already preprocessed). Outputs: ``probability`` (FP32 [N]), ``call`` (BYTES [N]), ``threshold``
(FP32 [N]), and, only when asked for by name, ``heatmap`` (BYTES [N], an occlusion map as PNG).

With ``--token-file`` the infer and STOW routes, the page and its API need ``Authorization: Bearer
TOKEN`` (or the page's cookie, set by opening ``/?token=TOKEN`` once). Logs hold UIDs, never names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.device.serve import oip, stow
from edgecxr.device.serve.config import parse_http
from edgecxr.device.serve.worker import Busy, now_iso
from edgecxr.shared.errors import EdgeCXRError, ImageReadError, NotApplicable
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.metrics import softmax_pos
from edgecxr.shared.preprocess import preprocess_grey

VERSION = "1"
IMAGE_INPUT = "image"
OUTPUTS = ("probability", "call", "threshold")
HEATMAP = "heatmap"
MAX_BATCH = 16
COOKIE = "edgecxr_token"
NOT_DIAGNOSIS = ("Decision support only. This reading is not a diagnosis: a clinician reads the film and decides. "
                 "Research software, not a medical device.")


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, " ".join(str(message).split())[:300], headers or {}


class HttpDoor:
    def __init__(self, cfg: Any, model: Any, trust: Any, worker: Any, spool: Any, metrics: Any, log: Any,
                 dicom: str | None = None):
        self.cfg, self.model, self.trust, self.worker, self.spool = cfg, model, trust, worker, spool
        self.metrics, self.log, self.dicom = metrics, log, dicom
        self.host, self.port = parse_http(cfg.http)
        self.max_body = int(cfg.http_max_mb * 1024 * 1024)
        self.token = self._read_token(cfg.token_file)
        self.tmp = Path(spool.root) / "http-tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        for p in self.tmp.iterdir():  # what a killed process left: never acknowledged
            with contextlib.suppress(OSError):
                p.unlink()
        self._decoders = threading.BoundedSemaphore(2)  # decoded images in memory at once, at most
        m = model.bundle.manifest
        self.input_name = str(m["input"]["name"])
        self.input_dtype = "FP32"  # whatever the model file takes, the runtime encodes it from float NCHW
        pp = model.preprocess
        self.input_shape = [-1, int(pp.channels), int(pp.size), int(pp.size)]
        self.server = None
        self.thread: threading.Thread | None = None
        self.inflight = 0  # infer requests in hand (touched only on the event loop's thread)

    @staticmethod
    def _read_token(path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            t = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise EdgeCXRError(f"cannot read the token file ({getattr(e, 'strerror', None) or e})", path) from None
        if len(t) < 16:
            raise EdgeCXRError("the token file holds fewer than 16 characters; use a long random token "
                               "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')", path)
        return t

    # ------------------------------------------------------------------ helpers
    def _authorised(self, request: Any) -> bool:
        if self.token is None:
            return True
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.cookies.get(COOKIE, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def _need_auth(self, request: Any) -> None:
        if not self._authorised(request):
            raise HttpError(401, "this node needs a bearer token (Authorization: Bearer ...)",
                            {"WWW-Authenticate": 'Bearer realm="edgecxr"'})

    def _model_name(self, request: Any) -> None:
        name = request.path_params.get("name", "")
        version = request.path_params.get("version", VERSION)
        if name != self.model.name or version != VERSION:
            raise HttpError(404, f"unknown model {name[:80]!r}" + (f" version {version[:20]!r}" if version != VERSION
                                                                   else "") + f"; this node serves {self.model.name!r}")

    async def _body(self, request: Any) -> bytes:
        """The request body, at most ``max_body`` bytes; over it 413. What is over is read and dropped (up to
        4x the limit) so that the client, still sending, reads the 413 instead of a connection reset."""
        n = request.headers.get("content-length")
        try:
            declared = int(n) if n is not None else None
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None
        chunks, size, over = [], 0, declared is not None and declared > self.max_body
        async for c in request.stream():
            size += len(c)
            if size > self.max_body:
                over = True
                chunks.clear()
                if size > 4 * self.max_body:
                    break
                continue
            chunks.append(c)
        if over:
            raise HttpError(413, f"request body of {declared if declared is not None else 'more than ' + str(size)} "
                                 f"bytes is over the limit of {self.max_body} (--http-max-mb)")
        return b"".join(chunks)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None, media: str = "application/json"):
        from starlette.responses import Response

        return Response(json.dumps(obj, separators=(",", ":")), status, headers=headers, media_type=media)

    def _error(self, e: HttpError):
        return self._json(e.status, {"error": e.message}, e.headers)

    # ------------------------------------------------------------------ OIP metadata
    def server_meta(self) -> dict[str, Any]:
        from edgecxr import __version__

        return {"name": "edgecxr", "version": __version__, "extensions": ["binary_tensor_data"]}

    def model_meta(self) -> dict[str, Any]:
        m = self.model.bundle.manifest
        return {"name": self.model.name, "versions": [VERSION], "platform": f"edgecxr_{m['backend']}_{m['precision']}",
                "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                           {"name": self.input_name, "datatype": self.input_dtype, "shape": self.input_shape}],
                "outputs": [{"name": "probability", "datatype": "FP32", "shape": [-1]},
                            {"name": "call", "datatype": "BYTES", "shape": [-1]},
                            {"name": "threshold", "datatype": "FP32", "shape": [-1]},
                            {"name": HEATMAP, "datatype": "BYTES", "shape": [-1]}],
                "parameters": {"labels": self.model.labels, "positive_label": self.model.labels[-1],
                               "threshold": self.model.threshold, "bundle_digest": self.trust.digest,
                               "signer": self.trust.signer or None, "note": NOT_DIAGNOSIS}}

    def ready(self) -> bool:
        return self.worker.is_alive()

    # ------------------------------------------------------------------ infer
    def _decode(self, blobs: list[bytes]) -> tuple[np.ndarray, list[np.ndarray], list[str | None]]:
        """Each encoded file through predict's intake rules and preprocessing (in a thread, bounded)."""
        xs, small, uids = [], [], []
        with self._decoders:
            for i, data in enumerate(blobs):
                where = f"input {IMAGE_INPUT!r}" + (f" element {i}" if len(blobs) > 1 else "")
                if not data:
                    raise HttpError(400, f"{where}: empty file")
                fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".img")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    grey = load_grey(name)
                    uids.append(self._sop_uid(name, data))
                except NotApplicable as e:
                    raise HttpError(422, f"{where}: {e.message}") from None
                except ImageReadError as e:
                    raise HttpError(400, f"{where}: {e.message}") from None
                except Exception as e:  # a reader bug: one line, never a 500 with a traceback
                    raise HttpError(400, f"{where}: cannot read the image ({e.__class__.__name__})") from None
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(name)
                xs.append(preprocess_grey(grey, self.model.preprocess))
                h, w = grey.shape
                k = max(1, int(max(h, w) // 640))
                small.append(np.ascontiguousarray(grey[::k, ::k]))
        return np.stack(xs).astype(np.float32), small, uids

    @staticmethod
    def _sop_uid(path: str, data: bytes) -> str | None:
        if len(data) < 132 or data[128:132] != b"DICM":
            return None
        with contextlib.suppress(Exception):
            import warnings

            import pydicom

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPInstanceUID", "") or "")[:64] or None
        return None

    def _job(self, x: np.ndarray, heat: bool):
        def run(model: Any) -> dict[str, Any]:
            t = time.perf_counter()
            logits = model.backend.infer(x)
            infer_s = time.perf_counter() - t
            out: dict[str, Any] = {"prob": softmax_pos(logits).astype(np.float64), "infer_s": infer_s}
            if heat:
                out["heat"] = [self.worker.occlusion(xi) for xi in x]
            return out
        return run

    async def infer(self, request: Any):
        t0 = time.perf_counter()
        self._need_auth(request)
        self._model_name(request)
        body = await self._body(request)
        hl = request.headers.get("inference-header-content-length")
        try:
            req = oip.parse_request(body, int(hl) if hl is not None else None)
        except ValueError:
            raise HttpError(400, "Inference-Header-Content-Length is not a number") from None
        except oip.OIPError as e:
            raise HttpError(e.status, e.message) from None
        if len(req.inputs) != 1:
            raise HttpError(400, f"this model takes one input ({IMAGE_INPUT!r} or {self.input_name!r}), "
                                 f"the request has {len(req.inputs)}")
        wanted = list(req.outputs) if req.outputs is not None else list(OUTPUTS)
        unknown = [o for o in wanted if o not in (*OUTPUTS, HEATMAP)]
        if unknown:
            raise HttpError(400, f"unknown output {unknown[0][:60]!r} (outputs: {', '.join((*OUTPUTS, HEATMAP))})")
        if self.inflight >= self.cfg.http_queue:  # decoding and waiting for the worker, together: bounded
            raise Busy(f"{self.inflight} requests in hand")
        self.inflight += 1
        self.metrics.current_requests.labels(self.model.name, VERSION).inc()
        try:
            return await self._infer(req, t0)
        finally:
            self.inflight -= 1
            self.metrics.current_requests.labels(self.model.name, VERSION).dec()

    async def _infer(self, req: oip.InferRequest, t0: float):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response

        t = req.inputs[0]
        wanted = list(req.outputs) if req.outputs is not None else list(OUTPUTS)
        small: list[np.ndarray] = []
        uids: list[str | None] = []
        if t.name == IMAGE_INPUT:
            if t.datatype != "BYTES":
                raise HttpError(400, f"input {IMAGE_INPUT!r}: datatype {t.datatype}, expected BYTES (encoded files)")
            if len(t.shape) != 1 or not 1 <= t.shape[0] <= MAX_BATCH:
                raise HttpError(400, f"input {IMAGE_INPUT!r}: shape {t.shape}, expected [N], 1 <= N <= {MAX_BATCH}")
            x, small, uids = await run_in_threadpool(self._decode, list(t.data))
        elif t.name == self.input_name:
            if t.datatype != self.input_dtype:
                raise HttpError(400, f"input {t.name!r}: datatype {t.datatype}, expected {self.input_dtype}")
            exp = self.input_shape[1:]
            if len(t.shape) != 4 or list(t.shape[1:]) != exp or not 1 <= t.shape[0] <= MAX_BATCH:
                raise HttpError(400, f"input {t.name!r}: shape {t.shape}, expected [N, {', '.join(map(str, exp))}] "
                                     f"with 1 <= N <= {MAX_BATCH}")
            x = np.ascontiguousarray(t.data, dtype=np.float32)
            if not np.isfinite(x).all():
                raise HttpError(400, f"input {t.name!r}: holds NaN or infinity")
            uids = [None] * len(x)
        else:
            raise HttpError(400, f"unknown input {t.name[:60]!r} (inputs: {IMAGE_INPUT!r}, {self.input_name!r})")
        heat = HEATMAP in wanted
        if heat and not small:
            raise HttpError(400, f"output {HEATMAP!r} needs the {IMAGE_INPUT!r} input (an encoded file)")
        fut = self.worker.submit(self._job(x, heat))
        try:
            res = await asyncio.wait_for(asyncio.wrap_future(fut), timeout=120)
        except asyncio.TimeoutError:
            raise HttpError(504, "the worker did not answer within 120 s") from None
        probs = res["prob"]
        self.metrics.inference_us(res["infer_s"] * 1e6)
        thr = self.model.threshold
        calls = [self.model.labels[int(p >= thr)] for p in probs]
        outs = {"probability": oip.Tensor("probability", "FP32", [len(probs)], probs.astype(np.float32)),
                "call": oip.Tensor("call", "BYTES", [len(probs)], [c.encode() for c in calls]),
                "threshold": oip.Tensor("threshold", "FP32", [len(probs)], np.full(len(probs), thr, np.float32))}
        if heat:
            from edgecxr.device.explain import png_bytes

            pngs = await run_in_threadpool(lambda: [png_bytes(self.worker.heat_picture(g, h, float(p)))
                                                    for g, h, p in zip(small, res["heat"], probs, strict=True)])
            outs[HEATMAP] = oip.Tensor(HEATMAP, "BYTES", [len(pngs)], pngs)
        total_ms = (time.perf_counter() - t0) * 1000
        rid = req.id or uuid.uuid4().hex[:16]
        for i, p in enumerate(probs):
            rec = {"time": now_iso(), "door": "http", "request_id": rid, "index": i, "status": "read",
                   "call": calls[i], "prob": round(float(p), 6), "threshold": thr, "bundle": self.model.name,
                   "bundle_digest": self.trust.digest, "input": t.name,
                   "timings_ms": {"infer": round(res["infer_s"] * 1000, 2), "total": round(total_ms, 2)}}
            if uids[i]:
                rec["sop_instance_uid"] = uids[i]
            self.worker.record(rec)
            self.metrics.read.labels("http").inc()
        self.metrics.request_us("REST", total_ms * 1000)
        body, headers = oip.encode_response(self.model.name, VERSION, req.id, [outs[o] for o in wanted],
                                            req.binary, req.binary_default)
        media = "application/octet-stream" if headers else "application/json"
        return Response(body, 200, headers=headers, media_type=media)

    # ------------------------------------------------------------------ STOW-RS
    async def stow_rs(self, request: Any):
        from starlette.concurrency import run_in_threadpool

        self._need_auth(request)
        try:
            boundary = stow.boundary_of(request.headers.get("content-type"))
        except stow.MediaTypeError as e:
            raise HttpError(e.status, e.message) from None
        body = await self._body(request)
        try:
            parts = stow.split_multipart(body, boundary)
        except ValueError as e:
            raise HttpError(400, f"the multipart body is malformed ({e})") from None
        if not parts:
            raise HttpError(400, "the multipart body has no parts")

        def store() -> list[stow.Outcome]:
            outs = []
            for headers, data in parts:
                ct = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
                if ct != "application/dicom":
                    outs.append(stow.Outcome(None, None, stow.CANNOT_UNDERSTAND, f"part of type {ct[:40]}"))
                    continue
                o = stow.check_part(data)
                if o.failure is None:
                    try:
                        self.spool.put(data, door="stow")
                        self.metrics.received.labels("stow").inc()
                    except Exception as e:  # SpoolFull, or a disk error: nothing half-written
                        o = stow.Outcome(o.sop_class, o.sop_instance, stow.OUT_OF_RESOURCES, str(e)[:120])
                if o.failure is not None:
                    self.metrics.refused_at_door.labels("stow", f"0x{o.failure:04X}").inc()
                    self.log(f"stow: refused {o.sop_instance or 'a part'} (0x{o.failure:04X}: {o.why})")
                outs.append(o)
            return outs

        outcomes = await run_in_threadpool(store)
        status, resp = stow.response(outcomes)
        return self._json(status, resp, media="application/dicom+json")

    # ------------------------------------------------------------------ page
    def node_info(self) -> dict[str, Any]:
        m = self.model.bundle.manifest
        return {"bundle": self.model.name, "digest": self.trust.digest, "signer": self.trust.signer or None,
                "backend": m["backend"], "precision": m["precision"], "target": m["target"],
                "threshold": self.model.threshold, "labels": self.model.labels, "ready": self.ready(),
                "queue": self.worker.jobs.qsize() + len(self.spool.pending()),
                "dicom": self.dicom, "note": NOT_DIAGNOSIS}

    def _wrap(self, method: str, fn):
        """A route handler: counts the call in the metrics and turns every error into one JSON answer."""
        from starlette.requests import Request

        door = self

        async def handler(request: Request):
            try:
                r = fn(request)
                if asyncio.iscoroutine(r):
                    r = await r
                if method:
                    (door.metrics.ok if r.status_code < 400 else door.metrics.fail)(method)
                return r
            except HttpError as e:
                if method:
                    door.metrics.fail(method)
                return door._error(e)
            except Busy as e:
                door.metrics.rejected_busy.inc()
                if method:
                    door.metrics.fail(method)
                return door._error(HttpError(503, f"the node is busy ({e}); try again", {"Retry-After": "1"}))
            except Exception as e:  # a bug here: one line in the log and in the answer, the node goes on
                door.log(f"http: {request.method} {request.url.path[:80]}: {e.__class__.__name__}: {str(e)[:160]}")
                if method:
                    door.metrics.fail(method)
                return door._error(HttpError(500, f"internal error ({e.__class__.__name__})"))
        return handler

    def _page(self, r):
        """The browser page, behind the node's token (a ?token= link sets the cookie once)."""
        from starlette.responses import HTMLResponse, RedirectResponse

        from edgecxr.device.serve.page import LOGIN, PAGE

        door = self
        token = r.query_params.get("token")
        if token is not None and door.token is not None:
            if hmac.compare_digest(token.encode(), door.token.encode()):
                resp = RedirectResponse("/", 303)
                resp.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                                secure=bool(door.cfg.tls_cert))
                return resp
            return HTMLResponse(LOGIN.replace("{{error}}", "That token is not this node's."), 401)
        if not door._authorised(r):
            return HTMLResponse(LOGIN.replace("{{error}}", ""), 401)
        return HTMLResponse(PAGE.replace("{{model}}", json.dumps(door.model.name)),
                            headers={"Cache-Control": "no-store", "Content-Security-Policy":
                                     "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
                                     "script-src 'unsafe-inline'; connect-src 'self'"})

    def app(self):
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        door = self
        wrap, page = self._wrap, self._page

        def live(r):
            return door._json(200, {"live": True})

        def ready(r):
            ok = door.ready()
            return door._json(200 if ok else 503, {"ready": ok})

        def server(r):
            return door._json(200, door.server_meta())

        def model(r):
            door._model_name(r)
            return door._json(200, door.model_meta())

        def model_ready(r):
            door._model_name(r)
            ok = door.ready()
            return door._json(200 if ok else 503, {"name": door.model.name, "ready": ok})

        def metrics(r):
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(door.metrics.text(), 200, media_type=CONTENT_TYPE_LATEST)

        def readings(r):
            door._need_auth(r)
            return door._json(200, list(reversed(door.worker.recent))[:25])

        def node(r):
            door._need_auth(r)
            return door._json(200, door.node_info())

        async def not_found(r, exc=None):
            return door._json(404, {"error": f"no such route: {r.method} {r.url.path[:100]}"})

        async def not_allowed(r, exc=None):
            return door._json(405, {"error": f"{r.method} is not allowed on {r.url.path[:100]}"})

        v = "/v2/models/{name}"
        routes = [
            Route("/v2", wrap("ServerMetadata", server)),
            Route("/v2/health/live", wrap("ServerLive", live)),
            Route("/v2/health/ready", wrap("ServerReady", ready)),
            Route(v, wrap("ModelMetadata", model)),
            Route(v + "/versions/{version}", wrap("ModelMetadata", model)),
            Route(v + "/ready", wrap("ModelReady", model_ready)),
            Route(v + "/versions/{version}/ready", wrap("ModelReady", model_ready)),
            Route(v + "/infer", wrap("ModelInfer", self.infer), methods=["POST"]),
            Route(v + "/versions/{version}/infer", wrap("ModelInfer", self.infer), methods=["POST"]),
            Route("/dicomweb/studies", wrap("Stow", self.stow_rs), methods=["POST"]),
            Route("/metrics", wrap("", metrics)),
            Route("/", wrap("", page)),
            Route("/api/readings", wrap("", readings)),
            Route("/api/node", wrap("", node)),
        ]
        return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})

    # ------------------------------------------------------------------ run
    def start(self) -> None:
        import uvicorn

        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it a kept-alive connection waits ~40 ms per answer (Nagle against delayed ACK)
        sock = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise EdgeCXRError(f"cannot listen on {self.host}:{self.port} for HTTP ({e.strerror or e})") from None
        if bool(self.cfg.tls_cert) != bool(self.cfg.tls_key):
            sock.close()
            raise EdgeCXRError("--tls-cert and --tls-key go together")
        for f in (self.cfg.tls_cert, self.cfg.tls_key):
            if f and not Path(f).is_file():
                sock.close()
                raise EdgeCXRError("TLS file not found", f)
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False, lifespan="off",
                                limit_concurrency=64, timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024,
                                ssl_certfile=str(self.cfg.tls_cert) if self.cfg.tls_cert else None,
                                ssl_keyfile=str(self.cfg.tls_key) if self.cfg.tls_key else None)
        try:
            config.load()
        except Exception as e:  # a bad certificate or key
            sock.close()
            raise EdgeCXRError(f"cannot start HTTPS ({e.__class__.__name__}: {str(e)[:120]})") from None
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="edgecxr-http",
                                       daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 30:
                raise EdgeCXRError(f"the HTTP server on {self.host}:{self.port} did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.cfg.tls_cert else 'http'}://{h}:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
