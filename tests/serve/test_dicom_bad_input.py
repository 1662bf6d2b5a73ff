"""Bad input over DICOM, sent by pynetdicom's own SCU: each gets a DICOM status or a logged refusal,
never a crash, and the next instance in the same association still succeeds: a CT (its context
refused at negotiation), short pixel data, files cut in their pixels and in their header (sent raw, as
they are on disk), JPEG noise, a JPEG 2000 cut in half, a 30000 x 30000 header, and a header that no
SR can carry. And a full spool: 0xA700 (out of resources), nothing half-written, and room again once
the worker has drained it."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from tests.hostile import DX_STORAGE, write_dicom
from tests.serve.harness import CALLING, NODE_AET, Node, echo, free_port, need_tools, study, uid, wait_for, xray

TOOLS = ("echoscu",)
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # the C-STOREs here come from pynetdicom; echoscu tells when the node is up


@contextlib.contextmanager
def association(port: int):
    from pynetdicom import AE

    ae = AE(ae_title=CALLING)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEG2000Lossless):
        ae.add_requested_context(DX_STORAGE, ts)  # one context each: a raw or compressed file goes as it is
    ae.add_requested_context(CT_STORAGE, ExplicitVRLittleEndian)  # the node refuses this one at negotiation
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established, "the node did not accept the association"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def c_store(assoc, what: Path | pydicom.Dataset, raw: bool = False) -> int:
    """The C-STORE status; ``raw``: the file's bytes as they are on disk (pynetdicom sends them without decoding)."""
    from pynetdicom import _config

    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = raw
    try:
        status = assoc.send_c_store(what)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    assert status and "Status" in status, "no C-STORE answer: the association broke"
    return int(status.Status)


def _cut(src: Path, dst: Path, at: int) -> Path:
    dst.write_bytes(src.read_bytes()[:at])
    return dst


def _offset_of_pixels(path: Path) -> int:
    """Where the Pixel Data value starts in the file."""
    data = path.read_bytes()
    i = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010), explicit VR: OB/OW, 2 reserved bytes, 4-byte length
    assert i > 0
    return i + 12


@pytest.fixture()
def bad_films(tmp_path) -> dict[str, Path]:
    d = tmp_path / "bad"
    d.mkdir()
    a, b = xray("PNEUMONIA", 1), xray("NORMAL", 1)
    good = write_dicom(d / "good.dcm", a, **study())
    # corrupt pixel data: the header says 224 x 224, the value holds 1000 bytes
    short = write_dicom(d / "short.dcm", b, **study())
    ds = pydicom.dcmread(short)
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(short, enforce_file_format=True)
    # truncated files: cut half way through the pixels, and inside the header
    whole = write_dicom(d / "whole.dcm", b, **study())
    cut_pixels = _cut(whole, d / "cut_pixels.dcm", _offset_of_pixels(whole) + 224 * 112)
    whole2 = write_dicom(d / "whole2.dcm", b, **study())
    cut_header = _cut(whole2, d / "cut_header.dcm", 420)
    # compressed, and broken: JPEG baseline whose one fragment is noise; a real JPEG 2000 cut in half
    noise = write_dicom(d / "jpeg_noise.dcm", b, **study())
    ds = pydicom.dcmread(noise)
    ds.PixelData = encapsulate([np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(noise, enforce_file_format=True)
    j2k = write_dicom(d / "j2k_cut.dcm", b, **study())
    ds = pydicom.dcmread(j2k)
    ds.compress(JPEG2000Lossless)
    whole = b"".join(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([whole[:len(whole) // 2]])
    ds.save_as(j2k, enforce_file_format=True)
    # a 30000 x 30000 DX: the header says 900 megapixels; the value is a small image
    huge = write_dicom(d / "huge.dcm", b[:64, :64], Rows=30000, Columns=30000, **study())
    # a chest film with a header value a report cannot carry (Patient's Sex 'Q': DICOM has M, F, O)
    sex_q = write_dicom(d / "sex_q.dcm", a, **study(PatientSex="Q"))
    return {"short": short, "cut_pixels": cut_pixels, "cut_header": cut_header, "jpeg_noise": noise, "j2k_cut": j2k,
            "huge": huge, "sex_q": sex_q, "good": good}


def test_bad_input_in_one_association_is_refused_and_logged_and_the_next_film_is_read(bundles, bad_films, tmp_path):
    need_tools(*TOOLS)
    f = bad_films
    # what pynetdicom sends for each: the short and the huge ones as datasets it encodes, the cut files raw
    assert len(pydicom.dcmread(f["short"]).PixelData) == 1000
    assert f["cut_header"].stat().st_size == 420 and f["cut_pixels"].stat().st_size < f["good"].stat().st_size
    node = Node(bundles["jetson-int8"], tmp_path / "spool", free_port())
    node.start()
    try:
        with association(node.port) as assoc:
            # a CT: its presentation context was rejected, so it cannot even be sent; the association goes on
            assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [CT_STORAGE]
            ct = pydicom.dcmread(write_dicom(tmp_path / "ct.dcm", xray("NORMAL"), SOPClassUID=CT_STORAGE, Modality="CT",
                                             **study()))
            with pytest.raises(ValueError, match="No presentation context"):
                assoc.send_c_store(ct)
            assert assoc.is_established
            statuses = {k: c_store(assoc, f[k], raw=True) if k.startswith("cut_") else
                        c_store(assoc, pydicom.dcmread(f[k])) for k in f}
        # each was stored (the status says only that); the worker decides, and says why in the log
        assert statuses == dict.fromkeys(statuses, 0x0000), {k: hex(v) for k, v in statuses.items()}
        lines = node.wait_lines(len(f), timeout=60)
        assert len(lines) == len(f), lines
        got = dict(zip(f, sorted(lines, key=lambda r: r["seq"]), strict=True))
        short, cut_pixels, huge, good = got["short"], got["cut_pixels"], got["huge"], got["good"]
        for k, r in got.items():
            if k not in ("good", "sex_q"):
                assert r["status"] == "refused" and r["reason"], (k, r)
                assert "sr_instance_uid" not in r, (k, r)
        for k in ("jpeg_noise", "j2k_cut"):
            assert got[k]["sop_instance_uid"] == uid(f[k]) and "pixel data" in got[k]["reason"].lower(), got[k]
        # the film is read and reported; the SR carries Patient's Sex empty (Type 2), and the log says so
        sq = got["sex_q"]
        assert sq["status"] == "read" and sq["header_blanked"] == ["PatientSex"], sq
        sq_sr = pydicom.dcmread(node.spool / "sr" / f"{sq['sr_instance_uid']}.dcm")
        assert sq_sr.PatientSex == "" and sq_sr.PatientID == pydicom.dcmread(f["sex_q"]).PatientID
        assert short["sop_instance_uid"] == uid(f["short"]) and "pixel data" in short["reason"].lower(), short
        assert cut_pixels["sop_instance_uid"] == uid(f["cut_pixels"]), cut_pixels
        assert "pixel data" in cut_pixels["reason"].lower(), cut_pixels
        assert "30000 x 30000" in huge["reason"] and "limit" in huge["reason"], huge
        assert huge["timings_ms"]["total"] < 5000  # from the header: 900 MP were never decoded
        assert good["status"] == "read" and good["sop_instance_uid"] == uid(f["good"]), good
        srs = list((node.spool / "sr").glob("*.dcm"))
        assert sorted(p.stem for p in srs) == sorted([good["sr_instance_uid"], sq["sr_instance_uid"]])
        assert not list((node.spool / "incoming").iterdir())
        # still alive, still answering
        assert node.alive(), node.log()
        assert echo(node.port).returncode == 0
        assert "Traceback" not in node.log(), node.log()
        assert node.stop() == 0, node.log()
    finally:
        node.kill()


def test_a_full_spool_answers_a700_writes_nothing_and_takes_instances_again_once_drained(bundles, tmp_path):
    need_tools(*TOOLS)
    d = tmp_path / "films"
    d.mkdir()
    a = xray("PNEUMONIA", 2)
    # 0.05 MB (52428 bytes): one 224 x 224 8-bit film (about 50.8 kB) fits, a 16-bit one (100 kB) never does
    big = write_dicom(d / "big16.dcm", a.astype(np.uint16) * 257, bits=16, **study())
    burst = [write_dicom(d / f"f{i}.dcm", xray("NORMAL" if i % 2 else "PNEUMONIA", i), **study()) for i in range(8)]
    after = write_dicom(d / "after.dcm", xray("NORMAL", 9), **study())
    assert big.stat().st_size > 52428 > max(p.stat().st_size for p in burst)
    node = Node(bundles["jetson-int8"], tmp_path / "spool", free_port(), "--spool-limit-mb", "0.05")
    node.start()
    incoming = node.spool / "incoming"
    try:
        with association(node.port) as assoc:
            # bigger than the whole limit: 0xA700, nothing written, not even a temp file
            assert c_store(assoc, pydicom.dcmread(big)) == 0xA700
            assert list(incoming.iterdir()) == []
            # a burst faster than the worker: each answer is stored (0x0000) or out of resources (0xA700)
            answers = {p: c_store(assoc, pydicom.dcmread(p)) for p in burst}
            assert set(answers.values()) <= {0x0000, 0xA700}, answers
            assert answers[burst[0]] == 0x0000
            leftovers = [p.name for p in incoming.iterdir() if not p.name.endswith(".dcm") or p.name.startswith(".")]
            assert leftovers == [], leftovers
            # the worker drains the spool; then, in the same association, there is room again
            wait_for("an empty spool", lambda: not list(incoming.iterdir()), 60)
            assert c_store(assoc, pydicom.dcmread(after)) == 0x0000
        stored = [p for p, s in answers.items() if s == 0x0000] + [after]
        full = [p for p, s in answers.items() if s == 0xA700]
        lines = node.wait_lines(len(stored), timeout=60)
        time.sleep(0.5)
        lines = node.lines()
        # every acknowledged instance has its line and its SR; none answered 0xA700 left a trace
        assert sorted(r["sop_instance_uid"] for r in lines) == sorted(uid(p) for p in stored), lines
        assert all(r["status"] == "read" for r in lines), lines
        assert len(list((node.spool / "sr").glob("*.dcm"))) == len(stored)
        assert "0xA700" in node.log()
        print(json.dumps({"burst": len(burst), "answered_a700": len(full), "stored": len(stored)}))
        assert node.alive() and node.stop() == 0, node.log()
    finally:
        node.kill()
