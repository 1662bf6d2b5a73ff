"""Writers of real and hostile image files: DICOM written with pydicom from the real full-resolution
X-rays in tests/data/fullres, PNG bombs, thumbnails, animated PNGs.  Used by test_intake.py and
test_fuzz.py (and by hand: `python -m tests.hostile OUT` writes the whole hostile set)."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.conftest import FULLRES

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
JPEG = FULLRES / "IM-0206-0001.jpeg"  # 8-bit grey, 1040 x 747


def real_u8(src: Path = JPEG) -> np.ndarray:
    with Image.open(src) as im:
        return np.asarray(im.convert("L"))


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8,
                bits_stored: int | None = None, frames: int = 1, signed: bool = False, **attrs) -> Path:
    """A real DX DICOM file (explicit VR little endian) holding ``pixels`` (H x W, or F x H x W)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for k, v in attrs.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    dt = {8: np.uint8, 16: np.uint16}[bits] if not signed else {8: np.int8, 16: np.int16}[bits]
    ds.PixelData = np.ascontiguousarray(pixels.astype(dt)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def voi_lut_item(lut: np.ndarray, first: int = 0, bits: int = 8) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, bits]
    item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUTData
    return item


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid greyscale PNG of side x side zero pixels (about 1 MB on disk, side^2 bytes decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def png16(path: Path, u8: np.ndarray) -> Path:
    """A 16-bit greyscale PNG holding u8 * 257 (the same image at 16 bits)."""
    Image.fromarray(u8.astype(np.uint16) * 257).save(path)
    return path


def apng(path: Path, u8: np.ndarray, frames: int = 2) -> Path:
    ims = [Image.fromarray(u8), *[Image.fromarray(255 - u8) for _ in range(frames - 1)]]
    ims[0].save(path, save_all=True, append_images=ims[1:])
    return path


def hostile_set(out: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what a reader must answer: a fragment of its one-line error, or 'ok')."""
    out.mkdir(parents=True, exist_ok=True)
    u8 = real_u8()
    small = u8[::4, ::4]
    s: dict[str, tuple[Path, str]] = {}

    def add(name, path, expect):
        s[name] = (path, expect)

    add("png_bomb_30000", png_bomb(out / "bomb.png"), "megapixels, over the limit")
    Image.fromarray(small[:8, :8]).save(out / "tiny8.png")
    add("png_8x8", out / "tiny8.png", "at least 64")
    Image.fromarray(u8[:63, :500]).save(out / "strip63.png")
    add("png_63x500", out / "strip63.png", "at least 64")
    add("apng_2_frames", apng(out / "anim.png", small), "2 frames")
    add("dicom_3_frames", write_dicom(out / "frames3.dcm", np.stack([small] * 3), frames=3), "3 frames")
    add("dicom_skull", write_dicom(out / "skull.dcm", small, BodyPartExamined="SKULL"), "not CHEST")
    add("dicom_ct", write_dicom(out / "ct.dcm", small, Modality="CT"), "not a projection radiograph")
    add("dicom_mr", write_dicom(out / "mr.dcm", small, Modality="MR"), "not a projection radiograph")
    add("dicom_lateral_LL", write_dicom(out / "ll.dcm", small, ViewPosition="LL"), "lateral")
    add("dicom_lateral_LAT", write_dicom(out / "lat.dcm", small, ViewPosition="LAT"), "lateral")
    add("dicom_no_anatomy_tags", write_dicom(out / "bare.dcm", small, Modality=None, BodyPartExamined=None,
                                             ViewPosition=None), "ok")
    add("dicom_chest_lowercase", write_dicom(out / "chest_lc.dcm", small, BodyPartExamined="chest "), "ok")
    add("dicom_8x8", write_dicom(out / "tiny.dcm", small[:8, :8]), "at least 64")
    add("dicom_window_width_0", write_dicom(out / "ww0.dcm", small, WindowCenter=128, WindowWidth=0), "window")
    add("dicom_voilutfunction_bogus", write_dicom(out / "voif.dcm", small, WindowCenter=128, WindowWidth=256,
                                                  VOILUTFunction="BOGUS"), "VOI")
    # header says 50000 x 50000 but holds a few bytes: refused before decoding
    d = write_dicom(out / "huge_hdr.dcm", small[:64, :64])
    import pydicom

    ds = pydicom.dcmread(d)
    ds.Rows = ds.Columns = 50000
    ds.save_as(out / "huge_hdr.dcm")
    add("dicom_header_50000x50000", out / "huge_hdr.dcm", "over the limit")
    ds = pydicom.dcmread(write_dicom(out / "trunc_px.dcm", small))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(out / "trunc_px.dcm")
    add("dicom_pixel_data_truncated", out / "trunc_px.dcm", "cannot decode")
    ds = pydicom.dcmread(write_dicom(out / "spp4.dcm", small))
    ds.SamplesPerPixel = 4
    ds.save_as(out / "spp4.dcm")
    add("dicom_samples_per_pixel_4", out / "spp4.dcm", "samples per pixel")
    ds = pydicom.dcmread(write_dicom(out / "rows0.dcm", small))
    ds.Rows = 0
    ds.save_as(out / "rows0.dcm")
    add("dicom_rows_0", out / "rows0.dcm", "no image size")
    raw = (out / "bare.dcm").read_bytes()
    (out / "trunc_file.dcm").write_bytes(raw[: len(raw) // 2])
    add("dicom_file_truncated", out / "trunc_file.dcm", "cannot decode")
    (out / "text.dcm").write_bytes(b"DICM?" * 100)
    add("dicom_not_dicom", out / "text.dcm", "not a DICOM")
    big = JPEG.read_bytes()
    (out / "trunc.jpeg").write_bytes(big[: len(big) // 3])
    add("jpeg_truncated", out / "trunc.jpeg", "truncated")
    (out / "empty.png").write_bytes(b"")
    add("png_empty", out / "empty.png", "empty file")
    (out / "dir.jpeg").mkdir(exist_ok=True)
    add("directory_named_jpeg", out / "dir.jpeg", "not a regular file")
    (out / "notimg.png").write_bytes(b"GIF89a not really" * 20)
    add("garbage_png", out / "notimg.png", "")
    return s


if __name__ == "__main__":
    for k, (p, e) in hostile_set(Path(sys.argv[1])).items():
        print(k, p, e, sep="\t")
