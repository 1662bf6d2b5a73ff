"""Types and ranges of a bundle manifest's fields, checked before anything uses them (device side).

:func:`edgecxr.device.bundle.verify` calls :func:`check_fields` after the required keys are found: a manifest
whose fields have the wrong JSON types or absurd values (edited by hand, corrupted, or hostile) is one
``BundleError`` line, never a TypeError deep inside bench or predict.  Found by tests/test_fuzz.py.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from edgecxr.shared.errors import BundleError

_SHA = re.compile(r"^[0-9a-f]{64}$")
LAYOUTS = ("NCHW", "NHWC", "NC")
DTYPES = ("float32", "int8", "uint8")
MAX_SIZE = 4096


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_fields(m: dict[str, Any], path: Path | str) -> None:
    def bad(what: str) -> BundleError:
        return BundleError(f"manifest {what}", path)

    if not isinstance(m["model_file"], str) or not m["model_file"]:
        raise bad("model_file is not a file name")
    files = m["files"]
    if not isinstance(files, dict) or not files:
        raise bad("files is not a table of file name -> sha256 and bytes")
    for name, rec in files.items():
        if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or not _SHA.match(rec["sha256"]) \
                or not _int(rec.get("bytes")) or rec["bytes"] < 0:
            raise bad(f"files entry {name[:60]!r} lacks a sha256 (64 hex) or a byte count")
    labels = m["labels"]
    if not isinstance(labels, list) or len(labels) != 2 or not all(isinstance(x, str) for x in labels):
        raise bad("labels is not a list of two names")
    if not _num(m["threshold"]) or not 0.0 <= m["threshold"] <= 1.0:
        raise bad("threshold is not a number in [0, 1]")
    for k in ("input", "output"):
        io = m[k]
        if not isinstance(io, dict):
            raise bad(f"{k} is not a record")
        shape = io.get("shape")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 6 or not all(_int(s) and 0 <= s <= 1 << 16
                                                                               for s in shape):
            raise bad(f"{k} shape is not a list of sizes")
        if io.get("layout") not in LAYOUTS or io.get("dtype") not in DTYPES:
            raise bad(f"{k} layout/dtype is not one of {'/'.join(LAYOUTS)} and {'/'.join(DTYPES)}")
        q = io.get("quant")
        if q is not None and (not isinstance(q, dict) or not _num(q.get("scale")) or q["scale"] <= 0
                              or not _int(q.get("zero_point"))):
            raise bad(f"{k} quant is not a positive scale and an integer zero point")
    pp = m["preprocess"]
    if not isinstance(pp, dict):
        raise bad("preprocess is not a record")
    if "size" in pp and (not _int(pp["size"]) or not 8 <= pp["size"] <= MAX_SIZE):
        raise bad(f"preprocess size is not an integer in 8..{MAX_SIZE}")
    for k in ("mean", "std"):
        v = pp.get(k)
        if v is not None and (not isinstance(v, list) or len(v) not in (1, 3) or not all(_num(x) for x in v)
                              or (k == "std" and any(x == 0 for x in v))):
            raise bad(f"preprocess {k} is not 1 or 3 finite numbers" + (" (non-zero)" if k == "std" else ""))
    ref = m.get("reference")
    if ref is not None:
        imgs = ref.get("images") if isinstance(ref, dict) else None
        if not isinstance(ref, dict) or (imgs is not None and not isinstance(imgs, dict)) or any(
                not isinstance(r, dict) or not _int(r.get("label")) or not _num(r.get("prob"))
                for r in (imgs or {}).values()):
            raise bad("reference is not a table of image sha256 -> label and prob")
