"""DICOMweb STOW-RS (PS3.18 10.5): ``multipart/related; type="application/dicom"`` into the spool.

Each part is one DICOM Part 10 file. It is checked as the DICOM door checks an association: a storage
class the node reads (CR, DX, Secondary Capture) and a transfer syntax it can decode; then it goes to
the same spool as a C-STORE, so the same worker reads it and the same outbox sends its SR. The answer
is the Store Instances Response Module in ``application/dicom+json``: ReferencedSOPSequence for what
was stored, FailedSOPSequence (with a FailureReason) for what was not. 200 when all were stored, 202
when some were, 409 when none were.

The multipart splitter is written here (about 30 lines, fuzzed in tests) rather than taken from
python-multipart, which is made for ``multipart/form-data`` and would be one more package on the board.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from edgecxr.device.serve.receiver import STORAGE_CLASSES, transfer_syntaxes

# FailureReason codes (PS3.4 Annex B, PS3.18 table 10.5.3-2)
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
MAX_PARTS = 1000


class MediaTypeError(Exception):
    """Not ``multipart/related; type="application/dicom"`` (415), or no boundary (400)."""

    def __init__(self, message: str, status: int = 415):
        super().__init__(message)
        self.message, self.status = message, status


def _params(ct: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in re.split(r';(?=(?:[^"]*"[^"]*")*[^"]*$)', ct)]
    media = parts[0].lower()
    out = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            out[k.strip().lower()] = v.strip().strip('"')
    return media, out


def boundary_of(content_type: str | None) -> str:
    """The multipart boundary of a STOW-RS request, or MediaTypeError."""
    media, p = _params(content_type or "")
    if media != "multipart/related":
        raise MediaTypeError(f"Content-Type is {media or 'missing'!s}; STOW-RS takes multipart/related; "
                             "type=\"application/dicom\"")
    if p.get("type", "").lower() != "application/dicom":
        raise MediaTypeError(f"multipart/related type is {p.get('type') or 'missing'!s}; this node stores "
                             "application/dicom parts (not metadata and bulk data)")
    b = p.get("boundary", "")
    if not b or len(b) > 200:
        raise MediaTypeError("multipart/related without a boundary", 400)
    return b


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body (RFC 2046): (headers with lower-case names, content). ValueError if malformed."""
    delim = b"--" + boundary.encode("latin-1")
    start = body.find(delim)
    if start < 0 or (start > 0 and body[start - 2:start] != b"\r\n"):
        raise ValueError("no opening boundary")
    pos = start + len(delim)
    parts: list[tuple[dict[str, str], bytes]] = []
    while True:
        if body[pos:pos + 2] == b"--":
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise ValueError("a boundary line is not followed by a line end")
        pos = eol + 2
        hend = body.find(b"\r\n\r\n", pos - 2)
        if hend < 0:
            raise ValueError("a part has no end of headers")
        headers: dict[str, str] = {}
        for line in body[pos:hend].split(b"\r\n"):
            if not line:
                continue
            if b":" not in line:
                raise ValueError("a part header line has no colon")
            k, v = line.split(b":", 1)
            headers[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
        cstart = hend + 4
        nxt = body.find(b"\r\n" + delim, cstart - 2)
        if nxt < 0:
            raise ValueError("a part has no closing boundary")
        parts.append((headers, body[cstart:max(cstart, nxt)]))
        if len(parts) > MAX_PARTS:
            raise ValueError(f"more than {MAX_PARTS} parts")
        pos = nxt + 2 + len(delim)


@dataclass
class Outcome:
    sop_class: str | None
    sop_instance: str | None
    failure: int | None  # None: stored
    why: str = ""


def check_part(data: bytes) -> Outcome:
    """Whether one part is an instance this node takes (as the DICOM door's negotiation decides)."""
    import pydicom

    if len(data) < 132 or data[128:132] != b"DICM":
        return Outcome(None, None, CANNOT_UNDERSTAND, "not a DICOM Part 10 file (no DICM preamble)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        meta = ds.file_meta
        cls = str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "") or "")
        uid = str(meta.get("MediaStorageSOPInstanceUID", "") or ds.get("SOPInstanceUID", "") or "")
        ts = str(meta.get("TransferSyntaxUID", "") or "")
    except Exception as e:
        return Outcome(None, None, CANNOT_UNDERSTAND, f"unreadable DICOM ({e.__class__.__name__})")
    if not uid:
        return Outcome(cls or None, None, CANNOT_UNDERSTAND, "no SOP Instance UID")
    if cls not in STORAGE_CLASSES:
        return Outcome(cls, uid, SOP_CLASS_NOT_SUPPORTED, f"SOP class {cls[:64]} is not CR, DX or Secondary Capture")
    if ts not in transfer_syntaxes():
        return Outcome(cls, uid, TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {ts[:64]} cannot be decoded here")
    return Outcome(cls, uid, None)


def response(outcomes: list[Outcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Store Instances Response (DICOM JSON)."""
    ok = [o for o in outcomes if o.failure is None]
    bad = [o for o in outcomes if o.failure is not None]

    def ref(o: Outcome) -> dict[str, Any]:
        item: dict[str, Any] = {}
        if o.sop_class:
            item["00081150"] = {"vr": "UI", "Value": [o.sop_class]}
        if o.sop_instance:
            item["00081155"] = {"vr": "UI", "Value": [o.sop_instance]}
        if o.failure is not None:
            item["00081197"] = {"vr": "US", "Value": [o.failure]}
        return item

    body: dict[str, Any] = {}
    if bad:
        body["00081198"] = {"vr": "SQ", "Value": [ref(o) for o in bad]}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": [ref(o) for o in ok]}
    status = 200 if ok and not bad else 202 if ok else 409
    return status, body
