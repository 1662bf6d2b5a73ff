"""What is accepted as a chest X-ray, and the one intensity convention of every format (device side).

:func:`edgecxr.shared.imageio.load_grey` (used by ``predict``, ``bench --data``, ``gate``, ``data split``,
``data check`` and the board agent) calls the checks here, so every command refuses the same files
with the same one line naming the file:

* more pixels than the limit (``--max-pixels``, $EDGECXR_MAX_PIXELS, default 64 megapixels): refused
  from the header, before anything is decoded (a 30000 x 30000 PNG is a decompression bomb);
* fewer than 64 pixels on the short side ($EDGECXR_MIN_SIDE; a thumbnail or an icon is not an X-ray);
* more than one frame (multi-frame DICOM, animated PNG): refused, one image per file;
* DICOM whose Modality is not a projection radiograph (CR, DX), whose BodyPartExamined is not
  CHEST, or whose ViewPosition is lateral (LL, RL, LAT): refused unless the user forces it
  (``--force-anatomy`` or $EDGECXR_FORCE_ANATOMY=1).  Missing attributes are not refused.

Intensity convention (``INTENSITY``, written into every bundle's preprocessing record): the value
range a file declares maps linearly onto [0, 1], exactly as an 8-bit JPEG's 0..255 does, and a
greyscale result is rounded to 256 grey levels, the depth of the training images (colour files
become luma 0.299 R + 0.587 G + 0.114 B, as before).  No file is stretched to
its own minimum and maximum.  For DICOM: the modality LUT (rescale slope/intercept or Modality LUT
Sequence), then the VOI LUT or window (first one; LINEAR, LINEAR_EXACT or SIGMOID VOILUTFunction),
both by pydicom, scaled by the output range the standard defines for them; without a VOI, the
range of BitsStored (through the modality LUT); MONOCHROME1 is inverted.  PNG: 8 bit /255, 16 bit
/65535.  So one image gives the same grey values, and the same probability, as JPEG, PNG or DICOM.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.shared.errors import ImageReadError, NotApplicable

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIDE = 64
PROJECTION_MODALITIES = ("CR", "DX")
CHEST = ("CHEST",)
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL")

INTENSITY = {
    "name": "grey8-range-v1",
    "rule": "declared value range -> [0, 1] linearly (8-bit JPEG/PNG: v/255, 16-bit PNG: v/65535; DICOM: "
            "modality LUT, then VOI LUT or window scaled by its output range, else the BitsStored range; "
            "MONOCHROME1 inverted), greyscale rounded to 256 levels, colour -> luma 0.299/0.587/0.114; "
            "never stretched to the image's own min/max",
}


@dataclass
class Policy:
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    force_anatomy: bool = False


_override: dict[str, Any] = {}


def configure(max_pixels: int | None = None, min_side: int | None = None, force_anatomy: bool | None = None) -> None:
    """Set the policy for this process (the CLI options); None keeps the environment's or default value."""
    for k, v in (("max_pixels", max_pixels), ("min_side", min_side), ("force_anatomy", force_anatomy)):
        if v is not None:
            _override[k] = v
    p = policy()
    if p.max_pixels < 1 or p.min_side < 1:
        from edgecxr.shared.errors import EdgeCXRError

        raise EdgeCXRError("--max-pixels and the minimum side must be positive")


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        return int(float(v))
    except ValueError:
        from edgecxr.shared.errors import EdgeCXRError

        raise EdgeCXRError(f"${name}={v!r} is not a number") from None


def policy() -> Policy:
    p = Policy(_env_int("EDGECXR_MAX_PIXELS", DEFAULT_MAX_PIXELS), _env_int("EDGECXR_MIN_SIDE", DEFAULT_MIN_SIDE),
               os.environ.get("EDGECXR_FORCE_ANATOMY", "").strip().lower() in ("1", "true", "yes"))
    for k, v in _override.items():
        setattr(p, k, v)
    return p


# ---------------------------------------------------------------- size and frames
@contextlib.contextmanager
def min_side(side: int) -> Iterator[None]:
    """Within the block, accept images down to ``side`` pixels on the short side: for images the
    project wrote itself from a dataset of known small size (a stress set made from PneumoniaMNIST's
    28 px arrays), never for files a user brings."""
    had, old = "min_side" in _override, _override.get("min_side")
    _override["min_side"] = int(side)
    try:
        yield
    finally:
        if had:
            _override["min_side"] = old
        else:
            _override.pop("min_side", None)


def check_size(width: int, height: int, frames: int, path: Path | str) -> None:
    """Refuse from the header: too many pixels (before decoding), too small, several frames."""
    p = policy()
    if frames > 1:
        raise ImageReadError(f"{frames} frames in one file; give one X-ray image per file", path)
    if width * height > p.max_pixels:
        raise ImageReadError(f"image is {width} x {height} = {width * height / 1e6:.0f} megapixels, over the limit "
                             f"of {p.max_pixels / 1e6:g} megapixels (a decompression bomb? raise it with --max-pixels)", path)
    if min(width, height) < p.min_side:
        raise ImageReadError(f"image is {width} x {height} pixels; a chest X-ray has at least {p.min_side} on its "
                             "short side", path)


# ---------------------------------------------------------------- DICOM
def _text(ds: Any, name: str) -> str | None:
    v = ds.get(name, None)
    if v is None:
        return None
    v = v.value if hasattr(v, "value") else v
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = "\\".join(str(x) for x in v)
    s = str(v).strip().upper()
    return s or None


def check_dicom(ds: Any, path: Path | str) -> None:
    """Header checks before the pixel data is decoded."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(str(ds.get("NumberOfFrames", 1) or 1).strip() or 1)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        raise ImageReadError("DICOM Rows, Columns, NumberOfFrames or SamplesPerPixel is not a number", path) from None
    if rows <= 0 or cols <= 0:
        raise ImageReadError("DICOM has no image size (Rows/Columns)", path)
    if spp not in (1, 3):
        raise ImageReadError(f"DICOM has {spp} samples per pixel (1 or 3 expected)", path)
    check_size(cols, rows, frames, path)
    if policy().force_anatomy:
        return
    hint = "; --force-anatomy reads it anyway"
    mod = _text(ds, "Modality")
    if mod is not None and mod not in PROJECTION_MODALITIES:
        raise NotApplicable(f"DICOM Modality is {mod[:16]}, not a projection radiograph (CR or DX){hint}", path)
    part = _text(ds, "BodyPartExamined")
    if part is not None and part not in CHEST:
        raise NotApplicable(f"DICOM BodyPartExamined is {part[:16]}, not CHEST{hint}", path)
    view = _text(ds, "ViewPosition")
    if view is not None and view in LATERAL_VIEWS:
        raise NotApplicable(f"DICOM ViewPosition is {view}, a lateral view; the model reads frontal (PA/AP) "
                             f"chest films{hint}", path)


def _modality_range(ds: Any) -> tuple[float, float]:
    """The range of values the modality LUT can output (PS3.3 C.11.1), as pydicom's windowing assumes."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 8) or 8)
    if int(ds.get("PixelRepresentation", 0) or 0) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, icpt = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and icpt is not None:
        lo, hi = lo * float(slope) + float(icpt), hi * float(slope) + float(icpt)
    return lo, hi


def to_8bit_levels(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> the 256 grey levels of the training images (still float32 in [0, 1])."""
    return (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def dicom_grey(ds: Any, arr: np.ndarray, path: Path | str) -> np.ndarray:
    """A decoded greyscale DICOM frame -> [0, 1] by the convention above."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(f"DICOM PhotometricInterpretation {photometric[:20]} is not greyscale", path)
    try:
        a = apply_modality_lut(arr, ds)
        has_lut = bool(ds.get("VOILUTSequence")) and ds.VOILUTSequence[0].get("LUTDescriptor") is not None \
            and ds.VOILUTSequence[0].get("LUTData") is not None
        has_window = ds.get("WindowCenter", None) is not None and ds.get("WindowWidth", None) is not None
        if has_lut:  # a LUT is indexed by integers (a modality rescale may have made floats of them)
            a = np.round(a).astype(np.int64) if a.dtype.kind == "f" else a
            out = apply_voi_lut(a, ds, index=0, prefer_lut=True).astype(np.float64)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        elif has_window:
            lo, hi = _modality_range(ds)
            out = apply_voi_lut(a.astype(np.float64), ds, index=0, prefer_lut=False).astype(np.float64)
        else:
            lo, hi = _modality_range(ds)
            out = a.astype(np.float64)
    except ImageReadError:
        raise
    except Exception as e:  # pydicom raises ValueError/KeyError/IndexError... on inconsistent LUTs or windows
        raise ImageReadError(f"DICOM modality/VOI LUT or window is invalid ({e.__class__.__name__}: "
                             f"{str(e).splitlines()[0][:120] if str(e) else ''})", path) from None
    if not np.isfinite(lo) or not np.isfinite(hi) or hi == lo:
        raise ImageReadError("DICOM declares an empty value range (BitsStored, LUT descriptor or rescale)", path)
    g = (out - lo) / (hi - lo)
    if photometric == "MONOCHROME1":
        g = 1.0 - g
    if not np.all(np.isfinite(g)):
        raise ImageReadError("DICOM pixel values are not finite after the modality/VOI LUT", path)
    return to_8bit_levels(g)


def check_intensity_record(preprocess: Any, path: Path | str) -> None:
    """A bundle made for another intensity convention than this reader's is refused (older bundles
    without the record were made from the same 8-bit training images and are read as before)."""
    rec = preprocess.get("intensity") if isinstance(preprocess, dict) else None
    if rec is None:
        return
    from edgecxr.shared.errors import BundleError

    name = rec.get("name") if isinstance(rec, dict) else rec
    if name != INTENSITY["name"]:
        raise BundleError(f"bundle expects intensity convention {str(name)[:40]!r}; this edgecxr reads "
                          f"{INTENSITY['name']!r} (update edgecxr on this machine)", path)
