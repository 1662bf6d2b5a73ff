"""One intensity convention for every format: the pixels of a real X-ray JPEG, written as DICOM (8, 12 and
16 bit, MONOCHROME1 and 2, with a window, LINEAR_EXACT, a VOI LUT sequence, a rescale), as 8- and 16-bit PNG,
give the same grey values and the same probability through a real int8 bundle as the JPEG itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pydicom.sequence import Sequence

from edgecxr.device.bundle import MANIFEST
from edgecxr.device.predict import predict
from edgecxr.shared.errors import BundleError
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.intake import INTENSITY
from tests.conftest import FULLRES, MINI, assert_clean_error, run_cli
from tests.hostile import JPEG, png16, real_u8, voi_lut_item, write_dicom


def same_pixel_files(tmp_path, src=JPEG):
    u8 = real_u8(src)
    u16 = u8.astype(np.uint16) * 257
    u12 = np.round(u8.astype(np.float64) * 4095 / 255).astype(np.uint16)
    Image.fromarray(u8).save(tmp_path / "g8.png")
    f = {
        "jpeg": src,
        "png8": tmp_path / "g8.png",
        "png16": png16(tmp_path / "g16.png", u8),
        "dicom8": write_dicom(tmp_path / "d8.dcm", u8),
        "dicom8_mono1": write_dicom(tmp_path / "d8m1.dcm", 255 - u8, photometric="MONOCHROME1"),
        "dicom16": write_dicom(tmp_path / "d16.dcm", u16, bits=16),
        "dicom12": write_dicom(tmp_path / "d12.dcm", u12, bits=16, bits_stored=12),
        # LINEAR window mapping the 16-bit range onto itself (PS3.3 C.11.2.1.2.1)
        "dicom16_window": write_dicom(tmp_path / "d16w.dcm", u16, bits=16, WindowCenter=32768, WindowWidth=65536),
        "dicom16_linear_exact": write_dicom(tmp_path / "d16le.dcm", u16, bits=16, WindowCenter=32767.5,
                                            WindowWidth=65535, VOILUTFunction="LINEAR_EXACT"),
        # rescale to HU-like units, window over the rescaled range
        "dicom12_rescale_window": write_dicom(tmp_path / "d12r.dcm", u12, bits=16, bits_stored=12, RescaleSlope=2,
                                              RescaleIntercept=-1024, WindowCenter=(4095 * 2) / 2 - 1024 + 0.5,
                                              WindowWidth=4095 * 2 + 1),
        # VOI LUT sequence (identity LUT on 8-bit data), with a window that must lose to it
        "dicom8_voi_lut": write_dicom(tmp_path / "d8lut.dcm", u8, WindowCenter=40, WindowWidth=20,
                                      VOILUTSequence=Sequence([voi_lut_item(np.arange(256))])),
        "dicom12_mono1_window": write_dicom(tmp_path / "d12m1w.dcm", 4095 - u12, bits=16, bits_stored=12,
                                            photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096),
    }
    return u8, f


def test_every_format_gives_the_jpegs_grey_values(tmp_path):
    u8, files = same_pixel_files(tmp_path)
    ref = u8.astype(np.float32) / 255.0
    for name, f in files.items():
        g = load_grey(f)
        assert g.shape == ref.shape, name
        assert np.array_equal(g, ref), (name, float(np.abs(g - ref).max()))


def test_a_dicom_is_not_stretched_to_its_own_min_and_max(tmp_path):
    u8 = real_u8()
    dim = (u8 // 2 + 40).astype(np.uint8)  # an under-exposed film: values 40..167
    g = load_grey(write_dicom(tmp_path / "dim.dcm", dim))
    assert abs(float(g.min()) - 40 / 255) < 1e-6 and abs(float(g.max()) - float(dim.max()) / 255) < 1e-6
    Image.fromarray(dim).save(tmp_path / "dim.png")
    assert np.array_equal(g, load_grey(tmp_path / "dim.png"))


def test_sigmoid_voi_function_is_applied(tmp_path):
    u8 = real_u8()
    lin = load_grey(write_dicom(tmp_path / "l.dcm", u8, WindowCenter=128, WindowWidth=256))
    sig = load_grey(write_dicom(tmp_path / "s.dcm", u8, WindowCenter=128, WindowWidth=256, VOILUTFunction="SIGMOID"))
    assert not np.array_equal(lin, sig)
    order = np.argsort(u8.ravel(), kind="stable")
    assert np.all(np.diff(sig.ravel()[order]) >= 0)  # monotonic in the stored value
    expect = 1 / (1 + np.exp(-4 * (u8.astype(np.float64) - 128) / 256))
    assert np.abs(sig - expect).max() <= 0.5 / 255 + 1e-6


# person698 spans grey 10..211: the old DICOM path stretched it to 0..255 and read another probability
@pytest.mark.parametrize("src", [FULLRES / "IM-0206-0001.jpeg", MINI / "PNEUMONIA" / "person698_virus_1294.jpeg"])
def test_same_pixels_same_probability_through_an_int8_bundle(bundles, tmp_path, src):
    _, files = same_pixel_files(tmp_path, src)
    rows = predict(bundles["nuc-int8"], list(files.values()))
    probs = {name: r["prob"] for name, r in zip(files, rows, strict=True)}
    assert all("error" not in r for r in rows), rows
    for name, p in probs.items():
        assert abs(p - probs["jpeg"]) <= 1e-6, (name, p, probs["jpeg"])
    assert len({r["label"] for r in rows}) == 1


def test_the_bundle_records_the_convention_and_refuses_another(bundles, bundle_copy):
    from edgecxr.device.bundle import verify

    m = verify(bundles["jetson-int8"]).manifest
    assert m["preprocess"]["intensity"] == INTENSITY
    b = bundle_copy("jetson-int8")
    m["preprocess"]["intensity"] = {"name": "minmax-stretch"}
    (b / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="intensity convention 'minmax-stretch'"):
        verify(b)
    assert_clean_error(run_cli("predict", b, JPEG), "intensity convention")
