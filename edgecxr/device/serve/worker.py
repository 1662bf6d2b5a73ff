"""The worker: one thread that reads spooled instances in arrival order and writes their results.

For each instance in ``incoming/`` (oldest sequence number first):

1. its header is read for the SOP Instance UID; a source that already has a record in
   ``sources/`` (a re-sent instance) is logged as ``duplicate`` and gets no new SR: one SR per source
   instance, the first reading stands;
2. :meth:`edgecxr.device.api.Model.predict_file` reads it with the intake rules of ``predict`` (one
   frame, CR/DX, chest, not lateral, pixel limit from the header, then decoding) and the bundle; a
   refusal is logged with its reason and gets no SR;
3. the SR (deterministic UIDs, see :mod:`.sr`) is written to ``sr/`` and linked into ``outbox/``;
4. one JSON line goes to the results log, then the source record, then the instance moves to
   ``done/``.

Between two instances the worker also serves the HTTP door's inference requests (a bounded queue of
jobs, each run in this thread, the one that owns the runtime): one worker and one results log for
every door, and spooled instances from DICOM and STOW-RS alike.

Every step can be repeated: after ``kill -9`` the instance is still in ``incoming/`` and is done
again; the SR has the same UID (and overwrites itself), the results line is not written twice (the
log is read at start for the sequence numbers it already has), and a source record that names this
very instance means only the move to ``done/`` was missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgecxr.device.serve.spool import SEQ_RE, Spool, durable_write
from edgecxr.device.serve.sr import Finding, build_sr, clean_header, sr_uids
from edgecxr.shared.errors import EdgeCXRError, NotApplicable
from edgecxr.shared.fsutil import atomic_append_line, fsync_dir, read_lines
from edgecxr.shared.imageio import load_grey

UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def source_key(uid: str) -> str:
    if UID_RE.match(uid) and len(uid) <= 64:
        return uid
    import hashlib

    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


HEAT_GRID, HEAT_BUDGET_S = 8, 3.0  # occlusion heatmaps: 8 x 8 steps, coarser if one would take over 3 s


class Busy(Exception):
    """The worker's job queue is full (the HTTP door answers 503 with Retry-After)."""


class Worker(threading.Thread):
    def __init__(self, spool: Spool, model: Any, digest: str, ae_title: str, results: Path,
                 queue_outbox: bool, keep_done: int = 1000, on_result: Callable[[], None] | None = None,
                 log: Callable[[str], None] = lambda s: None, metrics: Any = None, max_jobs: int = 16,
                 heatmap: bool = False):
        super().__init__(name="edgecxr-worker", daemon=True)
        self.spool, self.model, self.digest, self.ae_title = spool, model, digest, ae_title
        self.results, self.queue_outbox, self.keep_done = Path(results), queue_outbox, max(1, keep_done)
        self.on_result, self.log, self.metrics = on_result, log, metrics
        self.heatmap, self._occluder = heatmap, None
        self.device_uid = self._device_uid()
        self._halt = threading.Event()
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)  # the newest result lines, for the page
        self._logged = self._logged_seqs()
        self.jobs: queue.Queue[tuple[Callable[[Any], Any], Future]] = queue.Queue(maxsize=max(1, max_jobs))
        self.handled = 0

    # ---------------------------------------------------------------- jobs (the HTTP door)
    def submit(self, fn: Callable[[Any], Any]) -> Future:
        """Run ``fn(model)`` in the worker thread, between spooled instances; raise Busy when the queue is full."""
        if self._halt.is_set():
            raise Busy("the node is stopping")
        fut: Future = Future()
        try:
            self.jobs.put_nowait((fn, fut))
        except queue.Full:
            raise Busy(f"{self.jobs.maxsize} requests are waiting") from None
        self.spool.wake()
        return fut

    def _run_jobs(self, cancel: bool = False) -> None:
        """Run what waits in the job queue (or, ``cancel``, answer each with Busy: the node is stopping)."""
        while True:
            try:
                fn, fut = self.jobs.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            if cancel:
                fut.set_exception(Busy("the node is stopping"))
                continue
            try:
                fut.set_result(fn(self.model))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                fut.set_exception(e)

    # ---------------------------------------------------------------- the heatmap (both doors)
    def occlusion(self, x: Any) -> Any:
        """The occlusion map of one preprocessed image; in the worker thread only (it owns the runtime)."""
        if self._occluder is None:
            from edgecxr.device.explain import Occluder, OcclusionConfig

            self._occluder = Occluder(self.model.backend.infer, self.model.preprocess,
                                      OcclusionConfig(grid=HEAT_GRID, budget_s=HEAT_BUDGET_S))
            self._occluder.warm_up()
        return self._occluder.explain(x).heat

    def heat_picture(self, grey: Any, heat: Any, prob: float) -> Any:
        """The radiograph with its map over it and the reading below (a PIL image), marked not for diagnosis."""
        from edgecxr.device.explain import headline_for, render

        pos = prob >= self.model.threshold
        label = self.model.labels[int(pos)]
        return render(grey, heat, pos, [f"{self.model.name}   {self.digest[:19]}   NOT FOR DIAGNOSIS"],
                      headline_for(label, prob, self.model.threshold), cells=HEAT_GRID)

    def record(self, rec: dict[str, Any]) -> None:
        """One line in the results log for a request that has no spool sequence number (HTTP infer)."""
        atomic_append_line(self.results, json.dumps(rec, sort_keys=False))
        self.recent.append(rec)

    def _count(self, door: str, status: str, failed: bool = False) -> None:
        m = self.metrics
        if m is None:
            return
        if status == "read":
            m.read.labels(door).inc()
        elif status == "duplicate":
            m.duplicates.inc()
        elif failed:
            m.failed.labels(door).inc()
        else:
            m.not_applicable.labels(door).inc()

    def _device_uid(self) -> str:
        from pydicom.uid import generate_uid

        return str(generate_uid(entropy_srcs=["edgecxr-serve-device", self.ae_title, str(self.spool.root.resolve())]))

    def _logged_seqs(self) -> set[int]:
        if not self.results.exists():
            return set()
        out = set()
        for ln in read_lines(self.results):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                rec = json.loads(ln)
                self.recent.append(rec)
                if rec.get("seq") is not None:
                    out.add(int(rec["seq"]))
        return out

    def stop(self) -> None:
        self._halt.set()
        self.spool.wake()

    def run(self) -> None:
        try:
            self._loop()
        finally:
            self._run_jobs(cancel=True)

    def _loop(self) -> None:
        while not self._halt.is_set():
            self._run_jobs()
            items = self.spool.pending()
            if not items:
                self.spool.wait_unless(lambda: not self.jobs.empty() or self._halt.is_set(), 1.0)
                continue
            for p in items:
                self._run_jobs()
                if self._halt.is_set():
                    break
                try:
                    self.handle(p)
                except Exception as e:  # a disk error, never a crash of the node: tell, wait, retry
                    self.log(f"worker: cannot finish {p.name} ({e.__class__.__name__}: {str(e)[:200]}); retrying")
                    self._halt.wait(2.0)
                    break
            if self.handled % 50 == 0:
                self.spool.prune_done(self.keep_done)

    # ---------------------------------------------------------------- one instance
    def _line(self, rec: dict[str, Any]) -> None:
        seq = int(rec["seq"])
        if seq in self._logged:
            return
        atomic_append_line(self.results, json.dumps(rec, sort_keys=False))
        self._logged.add(seq)
        self.recent.append(rec)
        self._count(rec.get("door", "dicom"), rec["status"], failed=rec.get("failed", False))

    def _header(self, p: Path) -> Any:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(p, stop_before_pixels=True)

    def _identify(self, p: Path, seq: int, base: dict[str, Any], t0: float, waited_ms: float):
        """The instance's header and SOP Instance UID, and where its first reading is recorded; None when
        it was refused (unreadable, no UID) or read before (a re-sent instance: the first reading stands)."""
        try:
            hdr = self._header(p)
            uid = str(hdr.get("SOPInstanceUID", "") or "").strip()
        except Exception as e:
            self._refuse(p, base, None, f"unreadable DICOM ({e.__class__.__name__}: {str(e).strip()[:160]})", t0,
                         waited_ms, failed=True)
            return None
        if not uid:
            self._refuse(p, base, None, "DICOM has no SOP Instance UID", t0, waited_ms, failed=True)
            return None
        base["sop_instance_uid"] = uid[:64]
        with contextlib.suppress(Exception):
            base["study_instance_uid"] = str(hdr.get("StudyInstanceUID", "") or "")[:64] or None
        rec_path = self.spool.sources / f"{source_key(uid)}.json"
        if rec_path.exists():
            first = json.loads(rec_path.read_text())
            if int(first.get("seq", -1)) != seq:
                self._line({**base, "status": "duplicate", "first_seq": first.get("seq"),
                            "sr_instance_uid": first.get("sr_instance_uid"),
                            "reason": "this SOP Instance UID was read before; no new SR"})
            self._finish(p)
            return None
        return hdr, uid, rec_path

    def _write_sr(self, seq: int, sr, sr_uid: str) -> None:
        """The report, durably on disk, then queued for the outbox."""
        from io import BytesIO

        buf = BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        sr_file = self.spool.sr / f"{sr_uid}.dcm"
        durable_write(sr_file, buf.getvalue())
        self._queue(seq, sr_file)

    def handle(self, p: Path) -> None:
        m = SEQ_RE.match(p.name)
        if not m:
            return
        seq = int(m.group(1))
        t0 = time.time()
        waited_ms = max(0.0, (t0 - p.stat().st_mtime) * 1000.0)
        door = self.spool.door(seq)
        base: dict[str, Any] = {"time": now_iso(), "seq": seq, "door": door}
        found = self._identify(p, seq, base, t0, waited_ms)
        if found is None:
            return
        hdr, uid, rec_path = found
        t1 = time.time()
        try:
            grey = load_grey(p)  # the intake rules of `predict`: header checks, then decoding
            t1b = time.time()
            r = self.model.predict_array(grey)  # what predict_file does, timed apart from the decoding
        except EdgeCXRError as e:
            self._refuse(p, base, hdr, getattr(e, "message", str(e)), t0, waited_ms,
                         failed=not isinstance(e, NotApplicable))
            return
        except Exception as e:  # a reader bug must not stop the node: refuse this instance, go on
            self._refuse(p, base, hdr, f"cannot read the image ({e.__class__.__name__}: {str(e)[:160]})", t0,
                         waited_ms, failed=True)
            return
        t2 = time.time()
        if self.metrics is not None:
            self.metrics.inference_us((t2 - t1b) * 1e6)
        positive = r.label == self.model.labels[-1]
        sr_uid = sr_uids(uid, self.digest)[0]
        try:
            hdr, blanked = clean_header(hdr)
            sr = build_sr(hdr, Finding(r.prob, positive, r.threshold, self.model.name, self.digest),
                          self.device_uid, self.ae_title)
        except Exception as e:  # a header highdicom cannot carry into a report (bad UIDs, VRs)
            self._refuse(p, base, hdr, f"read ({r.label}, p={r.prob:.4f}) but no SR can be made from this header "
                                       f"({e.__class__.__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})",
                         t0, waited_ms, reading=r, failed=True)
            return
        self._write_sr(seq, sr, sr_uid)
        sc_uid = None
        if self.heatmap:
            try:
                sc_uid = self._heatmap(seq, hdr, grey, r, positive)
            except Exception as e:  # the picture is extra: its failure must not cost the report
                self.log(f"worker: no heatmap for {uid[:64]} ({e.__class__.__name__}: {str(e)[:160]})")
        t3 = time.time()
        rec = {**base, "status": "read", "call": r.label, "prob": round(r.prob, 6), "threshold": r.threshold,
               "bundle": self.model.name, "bundle_digest": self.digest, "sr_instance_uid": sr_uid,
               **({"heatmap_instance_uid": sc_uid} if sc_uid else {}),
               **({"header_blanked": blanked} if blanked else {}),
               "timings_ms": {"waited": round(waited_ms, 2), "predict": round((t2 - t1) * 1000, 2),
                              "sr": round((t3 - t2) * 1000, 2), "total": round((t3 - t0) * 1000, 2)}}
        self._line(rec)
        durable_write(rec_path, json.dumps({"seq": seq, "sr_instance_uid": sr_uid, "call": r.label}).encode())
        self._finish(p)
        if self.metrics is not None:
            self.metrics.request_us("STOW" if door == "stow" else "DICOM", (t3 - t0) * 1e6 + waited_ms * 1e3)
        if self.on_result:
            self.on_result()

    def _queue(self, seq: int, f: Path) -> None:
        """Link a written report (or heatmap) into the outbox, once."""
        if not self.queue_outbox:
            return
        link = self.spool.outbox / f"{seq:012d}-{f.name}"
        if not link.exists():
            with contextlib.suppress(FileExistsError):
                os.link(f, link)
            fsync_dir(self.spool.outbox)

    def _heatmap(self, seq: int, hdr: Any, grey: Any, r: Any, positive: bool) -> str:
        """The occlusion heatmap as a Secondary Capture in the source study ("NOT FOR DIAGNOSIS" in its pixels)."""
        from io import BytesIO

        import numpy as np

        from edgecxr.device.serve.sr import build_heatmap_sc, sc_uids
        from edgecxr.shared.preprocess import preprocess_grey

        sc_uid = sc_uids(str(hdr.SOPInstanceUID), self.digest)[0]
        sc_file = self.spool.sr / f"{sc_uid}.dcm"
        if not sc_file.exists():
            im = self.heat_picture(grey, self.occlusion(preprocess_grey(grey, self.model.preprocess)), r.prob)
            sc = build_heatmap_sc(hdr, np.asarray(im.convert("RGB")),
                                  Finding(r.prob, positive, r.threshold, self.model.name, self.digest))
            buf = BytesIO()
            sc.save_as(buf, enforce_file_format=True)
            durable_write(sc_file, buf.getvalue())
        self._queue(seq, sc_file)
        return sc_uid

    def _refuse(self, p: Path, base: dict[str, Any], hdr: Any, reason: str, t0: float, waited_ms: float,
                reading: Any = None, failed: bool = False) -> None:
        rec = {**base, "status": "refused", "failed": failed, "reason": reason, "bundle": self.model.name,
               "bundle_digest": self.digest,
               "timings_ms": {"waited": round(waited_ms, 2), "total": round((time.time() - t0) * 1000, 2)}}
        if reading is not None:
            rec.update(call=reading.label, prob=round(reading.prob, 6), threshold=reading.threshold)
        self._line(rec)
        self._finish(p)

    def _finish(self, p: Path) -> None:
        self.spool.finish(p)
        self.handled += 1
