"""Compressed X-rays over DICOM, as X-ray machines send them: the same validation film as JPEG 2000
lossless, RLE lossless, JPEG-LS lossless (all three: the very pixels, so the very probability) and JPEG
baseline (lossy: the same call, nearly the same probability), each on its own presentation context,
decoded by pydicom's pylibjpeg plugins on the node."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from tests.hostile import DX_STORAGE, write_dicom
from tests.serve.harness import CALLING, NODE_AET, Node, free_port, need_tools, study, xray

SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, JPEGLSLossless, JPEGBaseline8Bit)


def _films(d, a: np.ndarray) -> dict[str, pydicom.Dataset]:
    base = write_dicom(d / "raw.dcm", a, **study())
    out = {"raw": pydicom.dcmread(base)}
    for name, ts in (("j2k", JPEG2000Lossless), ("rle", RLELossless), ("jls", JPEGLSLossless)):
        ds = pydicom.dcmread(base)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.compress(ts)
        out[name] = ds
    from PIL import Image

    ds = pydicom.dcmread(base)  # JPEG baseline: what many CR/DX machines send
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=92)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"
    out["jpeg"] = ds
    return out


def test_compressed_films_are_decoded_and_read(bundles, tmp_path):
    need_tools("echoscu")
    from pynetdicom import AE

    films = _films(tmp_path, xray("PNEUMONIA", 2))
    node = Node(bundles["rpi-int8"], tmp_path / "spool", free_port())
    node.start()
    try:
        ae = AE(ae_title=CALLING)
        for ts in SYNTAXES:
            ae.add_requested_context(DX_STORAGE, ts)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)
        assert assoc.is_established
        try:
            accepted = {c.transfer_syntax[0] for c in assoc.accepted_contexts}
            assert accepted == set(SYNTAXES), accepted  # the node decodes each, so it accepts each
            for ds in films.values():
                st = assoc.send_c_store(ds)
                assert int(st.Status) == 0, st
        finally:
            assoc.release()
        by_uid = {r["sop_instance_uid"]: r for r in node.wait_lines(len(films))}
        got = {k: by_uid[str(ds.SOPInstanceUID)] for k, ds in films.items()}
        assert all(r["status"] == "read" for r in got.values()), got
        for k in ("j2k", "rle", "jls"):
            assert got[k]["prob"] == got["raw"]["prob"], (k, got[k], got["raw"])  # lossless: the same pixels
        assert got["jpeg"]["call"] == got["raw"]["call"]
        assert got["jpeg"]["prob"] == pytest.approx(got["raw"]["prob"], abs=0.05)
    finally:
        node.stop()
