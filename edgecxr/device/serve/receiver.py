"""The DICOM door: a pynetdicom Storage SCP with C-ECHO.

* SOP classes: CR, DX (for presentation and for processing) and Secondary Capture; any other (a CT,
  an MR...) is refused at negotiation (its presentation context is rejected, abstract syntax not
  supported).
* Transfer syntaxes: the uncompressed ones (implicit and explicit VR little endian, explicit big
  endian, deflated) and, of JPEG baseline, extended and lossless (SV1 and process 14), JPEG-LS,
  JPEG 2000 (lossless and lossy) and RLE, those that a pydicom pixel decoder installed here can
  decode (pylibjpeg and its plugins): a syntax that cannot be decoded is never accepted.
* Calling AE titles: with an allow-list, any other is rejected at association.
* C-STORE: pynetdicom writes the dataset to a file in the spool's ``recv/`` as it arrives (chunked
  receive: a 100 MB film never sits in memory), which then goes into the spool (fsync, rename, fsync
  of the folder) and only then is 0x0000 returned. The
  status says only that it was stored; the worker decides later whether it is a chest film. Over the
  spool limit (or a full disk): 0xA700, nothing written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecxr.device.serve.spool import Spool, SpoolFull

STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
COMPRESSED = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.51",  # JPEG extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
)
VERIFICATION = "1.2.840.10008.1.1"
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


def decodable(ts: str) -> bool:
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except Exception:
        return False


@functools.cache
def transfer_syntaxes() -> tuple[str, ...]:
    """What this node accepts: asked of the installed decoders once (STOW-RS asks again for every part)."""
    return UNCOMPRESSED + tuple(ts for ts in COMPRESSED if decodable(ts))


def make_ae(ae_title: str, spool: Spool, allow_ae: list[str] | None, log: Callable[[str], None],
            metrics: Any = None) -> tuple[Any, list]:
    """The application entity and its event handlers, ready for ``start_server``."""
    import tempfile

    from pynetdicom import AE, _config, evt

    # pynetdicom's chunked receive writes each incoming dataset to a NamedTemporaryFile: made in the
    # spool's recv/ (the same disk as incoming/, so the move is a rename), for this process
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(spool.recv)
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 8
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ts = transfer_syntaxes()
    for sop in STORAGE_CLASSES:
        ae.add_supported_context(sop, ts)
    ae.add_supported_context(VERIFICATION)
    if allow_ae:
        ae.require_calling_aet = list(allow_ae)

    def on_echo(event: Any) -> int:
        return 0x0000

    def on_store(event: Any) -> int:
        received = None
        try:
            received = event.dataset_path
        except AttributeError:  # chunked receive off: the dataset is in memory
            try:
                data = event.encoded_dataset(include_meta=True)
            except Exception as e:
                log(f"receiver: cannot encode a received dataset ({e.__class__.__name__}); answered 0xC000")
                return STATUS_CANNOT_UNDERSTAND
        try:
            if received is not None:
                spool.adopt(Path(received))
            else:
                spool.put(data)
        except SpoolFull as e:
            log(f"receiver: {e}; answered 0xA700 (out of resources)")
            if metrics is not None:
                metrics.refused_at_door.labels("dicom", "out of resources").inc()
            return STATUS_OUT_OF_RESOURCES
        except Exception as e:
            log(f"receiver: cannot spool ({e.__class__.__name__}: {str(e)[:120]}); answered 0xA700")
            if metrics is not None:
                metrics.refused_at_door.labels("dicom", "out of resources").inc()
            return STATUS_OUT_OF_RESOURCES
        if metrics is not None:
            metrics.received.labels("dicom").inc()
        return 0x0000

    def on_rejected(event: Any) -> None:
        try:
            aet = event.assoc.requestor.ae_title
        except Exception:
            aet = "?"
        log(f"receiver: association from {aet!s} rejected (calling AE title not allowed)")

    handlers = [(evt.EVT_C_ECHO, on_echo), (evt.EVT_C_STORE, on_store), (evt.EVT_REJECTED, on_rejected)]
    return ae, handlers
