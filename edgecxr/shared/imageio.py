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

    from edgecxr.shared.intake import check_size, to_8bit_levels

    bomb_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # the pixel limit is ours (intake.check_size, from the header, before decoding)
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as im:
                frames = getattr(im, "n_frames", 1) if im.format in ("PNG", "GIF", "TIFF") else 1
                check_size(im.width, im.height, int(frames or 1), path)
                im.load()
                mode = im.mode
                arr = np.asarray(im)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file (unrecognised format)", path) from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise ImageReadError(f"unreadable or truncated image ({msg})", path) from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
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
        return to_8bit_levels(a / top)
    if mode == "F":
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)
    raise ImageReadError(f"unsupported image mode {mode}", path)


def load_dicom(path: Path) -> np.ndarray:
    """DICOM to [0, 1] grey by the one intensity convention (edgecxr.intake), after its header checks."""
    with warnings.catch_warnings():  # pydicom warns about every non-conforming value: one line or none
        warnings.simplefilter("ignore", UserWarning)
        return _load_dicom(path)


def _load_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover - pydicom is a base dependency
        raise ImageReadError("pydicom is not installed; cannot read DICOM", path) from None
    from edgecxr.shared.intake import check_dicom, dicom_grey

    try:
        ds = pydicom.dcmread(path, defer_size="16 MB")
    except InvalidDicomError:
        raise ImageReadError("not a DICOM file", path) from None
    except Exception as e:  # pydicom raises many types on corrupt files
        raise ImageReadError(f"unreadable DICOM ({e.__class__.__name__}: {str(e).strip()[:160]})", path) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError("DICOM has no pixel data", path)
    check_dicom(ds, path)  # size, frames, modality, body part, view: before decoding
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise ImageReadError(f"cannot decode DICOM pixel data ({e.__class__.__name__}: "
                             f"{str(e).strip()[:160]})", path) from None
    try:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    except Exception:
        photometric = "?"
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or (arr.ndim == 3 and arr.shape[-1] == 3):
        try:
            if photometric.startswith("YBR"):
                from pydicom.pixels import convert_color_space

                arr = convert_color_space(arr, photometric, "RGB")
            bits = int(ds.get("BitsStored", 8) or 8)
        except Exception as e:
            raise ImageReadError(f"cannot convert DICOM colour pixels ({e.__class__.__name__})", path) from None
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ImageReadError(f"unsupported DICOM pixel array shape {arr.shape}", path)
        return np.clip(_luma(arr) / float(2**bits - 1), 0, 1).astype(np.float32)
    if arr.ndim != 2:
        raise ImageReadError(f"unsupported DICOM pixel array shape {arr.shape}", path)
    return dicom_grey(ds, arr, path)


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
