"""Reading real X-rays: JPEG (grey and colour), and DICOM written with pydicom from real images."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from edgecxr.shared.errors import ImageReadError
from edgecxr.shared.imageio import load_grey

from .conftest import FULLRES, MINI


def _real_grey_u8() -> np.ndarray:
    f = sorted((FULLRES).glob("person1320*.jpeg"))[0]
    return np.asarray(Image.open(f).convert("L"))


def write_dicom(path: Path, pixels: np.ndarray, photometric="MONOCHROME2", bits=16, **extra) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for k, v in extra.items():
        setattr(ds, k, v)
    if pixels is not None:
        ds.PixelData = pixels.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpeg_grey_and_colour():
    g = load_grey(next((MINI / "NORMAL").iterdir()))
    assert g.dtype == np.float32 and g.ndim == 2 and 0 <= g.min() and g.max() <= 1 and g.std() > 0.05
    rgb = load_grey(FULLRES / "person1177_virus_1999.jpeg")  # a colour JPEG of grey content
    assert rgb.ndim == 2 and rgb.shape == (440, 763)


def test_dicom_monochrome2_16bit_rescale_and_window(tmp_path):
    u8 = _real_grey_u8().astype(np.float64)
    stored = (u8 * 16).astype(np.uint16)  # 12-bit range in 16-bit words
    # rescale: HU-like = stored * 2 - 1000; window chosen to map the whole range to [0, 1]
    p = write_dicom(tmp_path / "a.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000,
                    WindowCenter=(255 * 16 * 2) / 2 - 1000, WindowWidth=255 * 16 * 2)
    g = load_grey(p)
    ref = u8 / 255.0
    assert g.shape == ref.shape
    assert np.abs(g - ref).mean() < 0.01


def test_dicom_monochrome1_is_inverted(tmp_path):
    u8 = _real_grey_u8()
    g2 = load_grey(write_dicom(tmp_path / "m2.dcm", u8, bits=8))
    g1 = load_grey(write_dicom(tmp_path / "m1.dcm", u8, photometric="MONOCHROME1", bits=8))
    assert np.allclose(g1, 1.0 - g2, atol=1e-6)
    assert np.corrcoef(g2.ravel(), u8.ravel())[0, 1] > 0.99


def test_dicom_rgb_to_grey(tmp_path):
    rgb = np.asarray(Image.open(FULLRES / "person1177_virus_1999.jpeg").convert("RGB"))
    g = load_grey(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits=8))
    assert np.abs(g - load_grey(FULLRES / "person1177_virus_1999.jpeg")).max() < 1e-5


def test_dicom_without_pixel_data(tmp_path):
    p = tmp_path / "nopix.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(p), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        load_grey(p)


@pytest.mark.parametrize("content,msg", [
    (b"this is not an image\n" * 10, "not an image"),
    (b"", "empty"),
])
def test_bad_files(tmp_path, content, msg):
    p = tmp_path / "x.jpeg"
    p.write_bytes(content)
    with pytest.raises(ImageReadError, match=msg) as e:
        load_grey(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg(tmp_path):
    src = FULLRES / "IM-0206-0001.jpeg"
    p = tmp_path / "trunc.jpeg"
    p.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    with pytest.raises(ImageReadError, match="truncated"):
        load_grey(p)


def test_not_a_dicom(tmp_path):
    p = tmp_path / "x.dcm"
    p.write_bytes(b"\x00" * 300)
    with pytest.raises(ImageReadError):
        load_grey(p)
    assert pydicom  # imported for the writer helpers above
