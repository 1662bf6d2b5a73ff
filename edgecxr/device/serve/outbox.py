"""The outbox: reports on disk until the PACS has them (C-STORE, bounded retries with backoff).

``outbox/`` holds one hard link per report to deliver, named by arrival sequence. A round opens
one association to ``--pacs`` and stores them oldest first; each one that the PACS acknowledges
(0x0000, or a warning 0xB000/0xB006/0xB007) is unlinked. A round that fails is tried again
``outbox_retries`` times, waiting ``outbox_backoff_s`` x 1, 2, 4, ... (at most 60 s); then the
reports stay in the outbox and the PACS is tried again every ``outbox_recheck_s`` seconds, and at
every new report, so what waits goes out as soon as the PACS answers again. After a restart the
outbox is sent from disk. A report sent just before ``kill -9`` and not yet unlinked is sent once
more, with the same SOP Instance UID: the PACS keeps one instance.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from edgecxr.device.serve.config import Peer
from edgecxr.shared.fsutil import fsync_dir

OK_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
              "1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture (the --heatmap picture)


class Outbox(threading.Thread):
    def __init__(self, folder: Path, pacs: Peer, ae_title: str, retries: int = 5, backoff_s: float = 1.0,
                 recheck_s: float = 30.0, log: Callable[[str], None] = lambda s: None):
        super().__init__(name="edgecxr-outbox", daemon=True)
        self.folder, self.pacs, self.ae_title = Path(folder), pacs, ae_title
        self.retries, self.backoff_s, self.recheck_s, self.log = max(1, retries), backoff_s, recheck_s, log
        self._halt = threading.Event()
        self._kick = threading.Event()
        self.delivered = 0
        self.metrics = None  # a serve.metrics.Metrics, set by the node

    def kick(self) -> None:
        """A new report is waiting: try now."""
        self._kick.set()

    def stop(self) -> None:
        self._halt.set()
        self._kick.set()

    def pending(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("*.dcm") if not p.name.startswith("."))

    def run(self) -> None:
        parked = False
        while not self._halt.is_set():
            self._kick.clear()
            items = self.pending()
            if not items:
                self._kick.wait(self.recheck_s)
                continue
            ok = False
            for attempt in range(self.retries):
                if self._halt.is_set():
                    return
                err = self.deliver(items)
                if err is not None and self.metrics is not None:
                    self.metrics.sr_failed.inc()
                if err is None:
                    ok = True
                    break
                if attempt + 1 < self.retries:
                    self._halt.wait(min(60.0, self.backoff_s * 2 ** attempt))
                    items = self.pending() or items
            if ok:
                if parked:
                    self.log(f"outbox: {self.pacs} answers again; delivered what waited")
                parked = False
                continue
            if not parked:
                self.log(f"outbox: {self.pacs} not reachable after {self.retries} attempts ({err}); "
                         f"{len(self.pending())} report(s) kept in {self.folder}, tried again every "
                         f"{self.recheck_s:g} s")
            parked = True
            self._kick.wait(self.recheck_s)

    def deliver(self, items: list[Path]) -> str | None:
        """One association, every item; None when all were acknowledged, else why not."""
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for c in SR_CLASSES:
            ae.add_requested_context(c, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        try:
            assoc = ae.associate(self.pacs.host, self.pacs.port, ae_title=self.pacs.ae_title)
        except Exception as e:  # name resolution and socket errors
            return f"{e.__class__.__name__}: {str(e)[:120]}"
        if not assoc.is_established:
            return "association rejected or no answer"
        try:
            for p in items:
                if self._halt.is_set():
                    return "stopping"
                if not p.exists():
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    status = assoc.send_c_store(p)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code not in OK_STATUSES:
                    return f"C-STORE of {p.name} answered 0x{code & 0xFFFF:04X}" if code >= 0 else \
                        f"no answer to the C-STORE of {p.name}"
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                fsync_dir(self.folder)
                self.delivered += 1
                if self.metrics is not None:
                    self.metrics.sr_sent.inc()
            return None
        finally:
            with contextlib.suppress(Exception):
                assoc.release()
