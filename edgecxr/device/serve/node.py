"""``edgecxr serve``: one process, one spool, one worker, one results log, one outbox.

Startup fails closed: the bundle must verify (every file's sha256) and be signed by a key this node
trusts (``--key``, else $EDGECXR_TRUSTED_KEYS or the board's trusted_keys file); a node with no
trusted keys refuses to start unless ``--allow-unsigned``. Then the worker and the outbox resume
from disk (whatever a previous run left in ``incoming/`` and ``outbox/``), and the DICOM door opens.
SIGTERM or Ctrl-C: the door closes, the worker finishes the instance in hand, the process exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from edgecxr.device.serve.config import ServeConfig
from edgecxr.shared.errors import BundleError, EdgeCXRError


def _stderr(msg: str) -> None:
    print(f"edgecxr serve: {msg}", file=sys.stderr, flush=True)


def open_model(cfg: ServeConfig):
    """Verify the bundle under the node's trust policy and load it."""
    from edgecxr.device.api import Model
    from edgecxr.device.bundle import verify
    from edgecxr.device.signing import ENV_KEYS, default_keys_file

    b = verify(cfg.bundle, keys=[str(k) for k in cfg.key] or None)
    if not b.trust.signer and not cfg.allow_unsigned:
        why = "it is not signed" if not b.trust.signed else "it is signed, but"
        raise BundleError(f"{why} no key is trusted on this node, and a clinical node runs only bundles signed by "
                          f"a trusted key (add one: edgecxr keys trust KEY.pub, --key, ${ENV_KEYS} or "
                          f"{default_keys_file()}; or start with --allow-unsigned)", cfg.bundle)
    return Model(b, cfg.threads), b.trust


def _need_extra() -> None:
    """pynetdicom and highdicom come with the serve extra; without them, one line instead of a traceback."""
    for name in ("pynetdicom", "highdicom", "starlette", "uvicorn", "prometheus_client"):
        try:
            __import__(name)
        except ImportError as e:
            raise EdgeCXRError(f"serve needs the serve extra (pip install 'edgecxr[serve]'): {e}") from None


def _assemble(cfg: ServeConfig, log: Callable[[str], None]):
    """The node's parts, not yet started: model and its trust, spool, outbox (with a PACS), metrics,
    worker, HTTP door (with --http). Returns them and the DICOM door's description."""
    from edgecxr.device.serve.metrics import Metrics
    from edgecxr.device.serve.outbox import Outbox
    from edgecxr.device.serve.spool import Spool
    from edgecxr.device.serve.worker import Worker
    from edgecxr.shared.intake import configure

    if cfg.max_pixels:
        configure(max_pixels=cfg.max_pixels)
    model, trust = open_model(cfg)
    try:
        spool = Spool(cfg.spool, cfg.spool_limit_bytes)
    except OSError as e:
        raise EdgeCXRError(f"cannot use the spool folder ({e.strerror or e})", cfg.spool) from None
    outbox = None
    if cfg.pacs:
        outbox = Outbox(spool.outbox, cfg.pacs, cfg.ae_title, cfg.outbox_retries, cfg.outbox_backoff_s,
                        cfg.outbox_recheck_s, log)
    metrics = Metrics(model.name)
    if outbox:
        outbox.metrics = metrics
    worker = Worker(spool, model, trust.digest, cfg.ae_title, cfg.results or spool.results, queue_outbox=outbox is not None,
                    keep_done=cfg.keep_done, on_result=outbox.kick if outbox else None, log=log, metrics=metrics,
                    max_jobs=cfg.http_queue, heatmap=cfg.heatmap)
    metrics.track(lambda: worker.jobs.qsize() + len(spool.pending()),
                  lambda: len(outbox.pending()) if outbox else 0)
    dicom = f"{cfg.ae_title}@{cfg.host}:{cfg.dicom_port}" if cfg.dicom_port else None
    door = None
    if cfg.http:
        from edgecxr.device.serve.http import HttpDoor

        door = HttpDoor(cfg, model, trust, worker, spool, metrics, log, dicom)
    return model, trust, spool, outbox, worker, door, metrics


def _listening(cfg: ServeConfig, server, door, model, trust, spool, worker) -> str:
    from edgecxr.device.serve.receiver import transfer_syntaxes

    n_ts = len(transfer_syntaxes())
    doors = ([f"DICOM on {cfg.host}:{cfg.dicom_port} as {cfg.ae_title} ({n_ts} transfer syntaxes)"] if server else []) \
        + ([f"HTTP on {door.url} (OIP /v2, STOW-RS /dicomweb/studies, /metrics, the page at /"
            f"{'; bearer token required' if door.token else ''})"] if door else [])
    return (f"listening: {'; '.join(doors)}; bundle "
            f"{model.name} {trust.digest[:19]}... ({trust.describe() if trust.signer else 'UNSIGNED, --allow-unsigned'}); "
            f"spool {cfg.spool} ({len(spool.pending())} waiting); results {worker.results}; "
            f"PACS {cfg.pacs or 'none (reports stay in the spool)'}"
            + (f"; calling AE titles allowed: {', '.join(cfg.allow_ae)}" if cfg.allow_ae else ""))


def serve(cfg: ServeConfig, log: Callable[[str], None] = _stderr, ready: Callable[[], None] | None = None) -> int:
    _need_extra()
    from edgecxr.device.serve.receiver import make_ae

    model, trust, spool, outbox, worker, door, metrics = _assemble(cfg, log)
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server = None
        if cfg.dicom_port:
            ae, handlers = make_ae(cfg.ae_title, spool, cfg.allow_ae, log, metrics)
            try:
                server = ae.start_server((cfg.host, cfg.dicom_port), block=False, evt_handlers=handlers)
            except OSError as e:
                raise EdgeCXRError(f"cannot listen on {cfg.host}:{cfg.dicom_port} ({e.strerror or e})") from None
        worker.start()
        if outbox:
            outbox.start()
        if door:
            try:
                door.start()
            except BaseException:
                if server:
                    server.shutdown()
                raise
        log(_listening(cfg, server, door, model, trust, spool, worker))
        if ready:
            ready()
        while not stop.wait(0.5):
            pass
        log("stopping: no new associations or requests; finishing the instance in hand")
        if door:
            door.stop()
        if server:
            server.shutdown()
        worker.stop()
        worker.join()
        if outbox:
            outbox.stop()
            outbox.join(timeout=60)
        log(f"stopped ({worker.handled} instance(s) handled this run, {len(spool.pending())} waiting in the spool, "
            f"{len(outbox.pending()) if outbox else 0} report(s) in the outbox)")
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
