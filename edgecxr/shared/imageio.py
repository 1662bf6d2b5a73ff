"""Read X-ray images (JPEG/PNG/DICOM) into one greyscale float32 array in [0, 1].

Device side: numpy, Pillow and (for DICOM) pydicom only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from edgecxr.shared.errors import ImageReadError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES


def is_candidate(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES and not path.name.startswith(".")


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def load_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                arr = np.asarray(im)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file (unrecognised format)", path) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
        msg = str(e).strip() or e.__class__.__name__
        raise ImageReadError(f"unreadable or truncated image ({msg})", path) from None
    if arr.size == 0:
        raise ImageReadError("image has no pixels", path)
    if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV") or arr.ndim == 3:
        if mode == "P" or mode not in ("RGB", "RGBA"):
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        return (_luma(arr[..., :3]) / 255.0).astype(np.float32)
    if mode in ("L", "LA"):
        return (arr.astype(np.float32) / 255.0)
    if mode == "1":
        return arr.astype(np.float32)
    if mode.startswith("I;16") or mode == "I":
        a = arr.astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        return np.clip(a / top, 0, 1).astype(np.float32)
    if mode == "F":
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    raise ImageReadError(f"unsupported image mode {mode}", path)


def load_dicom(path: Path) -> np.ndarray:
    """DICOM to [0, 1] grey: modality LUT, VOI LUT or window, MONOCHROME1 inverted."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom is a base dependency
        raise ImageReadError("pydicom is not installed; cannot read DICOM", path) from None
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError("not a DICOM file", path) from None
    except Exception as e:  # pydicom raises many types on corrupt files
        raise ImageReadError(f"unreadable DICOM ({e.__class__.__name__}: {e})", path) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError("DICOM has no pixel data", path)
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ImageReadError(f"cannot decode DICOM pixel data ({e})", path) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or (arr.ndim == 3 and arr.shape[-1] == 3):
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        return np.clip(_luma(arr) / float(2**bits - 1), 0, 1).astype(np.float32)
    if arr.ndim != 2:
        raise ImageReadError(f"unsupported DICOM pixel array shape {arr.shape}", path)
    a = apply_modality_lut(arr, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds and "VOILUTSequence" not in ds:
        c = float(np.atleast_1d(ds.WindowCenter)[0])
        w = float(np.atleast_1d(ds.WindowWidth)[0])
        w = max(w, 1.0)
        out = np.clip((a - (c - 0.5)) / (w - 1.0 if w > 1 else 1.0) + 0.5, 0.0, 1.0)
    else:
        if "VOILUTSequence" in ds:
            a = apply_voi_lut(a, ds).astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def load_grey(path: str | Path) -> np.ndarray:
    """Load any supported X-ray file as an HxW float32 array in [0, 1]."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError("file not found", path)
    if not path.is_file():
        raise ImageReadError("not a regular file", path)
    if path.stat().st_size == 0:
        raise ImageReadError("empty file", path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return load_dicom(path)
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return load_dicom(path)
    return load_pil(path)
