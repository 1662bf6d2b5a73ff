"""Property-based and fuzz tests (Hypothesis): manifest parsing, image and DICOM decoding, tar unpacking
(bundle archives, pushed image archives, the agent's file receiver) and the serial frame decoder.  No input
may raise anything but the project's one-line errors (EdgeCXRError); the frame decoder never raises.

Bounded: few examples per property, derandomized (the same examples on every run, so CI cannot flake);
HYPOTHESIS_PROFILE=fuzz runs many more, randomly, for a fuzzing session."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgecxr.device.bundle import MANIFEST, unpack, verify
from edgecxr.device.link.files import FileReceiver
from edgecxr.device.link.framing import MAGIC, Decoder, Frame, encode_frame
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.imageio import load_grey
from tests.hostile import real_u8, write_dicom

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", max_examples=2000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                    max_leaves=12)


def _mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for kind, pos, val in edits:
        if not b:
            break
        i = pos % len(b)
        if kind == 0:
            b[i] = val
        elif kind == 1:
            del b[i:i + 1 + val % 64]
        elif kind == 2:
            b[i:i] = bytes([val]) * (1 + val % 16)
        else:
            del b[i:]
    return bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=6)


# ---------------------------------------------------------------- manifest parsing
@pytest.fixture(scope="module")
def fake_bundle(tmp_path_factory):
    """A structurally real bundle folder (a real manifest shape and a model file) for parser fuzzing."""
    d = tmp_path_factory.mktemp("b") / "b"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"\x08\x07" * 100)
    from edgecxr.shared.fsutil import sha256_file

    m = {"schema": 1, "kind": "edgecxr-bundle", "target": "nuc", "backend": "onnxruntime", "precision": "int8",
         "model_file": "model.onnx",
         "input": {"name": "x", "shape": [1, 3, 64, 64], "layout": "NCHW", "dtype": "float32"},
         "output": {"name": "y", "shape": [1, 2], "layout": "NC", "dtype": "float32"},
         "preprocess": {"size": 64, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3},
         "labels": ["NORMAL", "PNEUMONIA"], "threshold": 0.5,
         "files": {"model.onnx": {"sha256": sha256_file(d / "model.onnx"), "bytes": 200}}}
    (d / MANIFEST).write_text(json.dumps(m))
    verify(d)
    return d, m


def _check_manifest(folder: Path, text: bytes) -> None:
    (folder / MANIFEST).write_bytes(text)
    try:
        b = verify(folder)
    except EdgeCXRError as e:
        assert "\n" not in str(e)
        return
    # accepted: then the records the runtime uses must be usable
    b.input, b.output, b.preprocess, b.threshold  # noqa: B018


@given(field=st.sampled_from(["schema", "kind", "model_file", "input", "output", "preprocess", "labels", "threshold",
                              "files", "reference", "__drop__"]),
       value=JSON, sub=st.sampled_from([None, "shape", "layout", "dtype", "quant", "size", "mean", "model.onnx"]))
def test_manifest_fields_replaced_by_any_json(fake_bundle, tmp_path, field, value, sub):
    src, m = fake_bundle
    d = tmp_path / "b"
    if not d.exists():
        shutil.copytree(src, d)
    m = json.loads(json.dumps(m))
    if field == "__drop__":
        m.pop(sub or "files", None)
    elif sub and isinstance(m.get(field), dict):
        m[field][sub] = value
    else:
        m[field] = value
    _check_manifest(d, json.dumps(m).encode())


@given(edits=EDITS)
def test_manifest_bytes_mutated(fake_bundle, tmp_path, edits):
    src, m = fake_bundle
    d = tmp_path / "b"
    if not d.exists():
        shutil.copytree(src, d)
    _check_manifest(d, _mutate(json.dumps(m).encode(), edits))


@given(depth=st.integers(1, 200_000))
@example(depth=100_000)  # json.loads raises RecursionError, not ValueError, this deep
@settings(max_examples=5)
def test_deeply_nested_manifest(fake_bundle, tmp_path, depth):
    src, _ = fake_bundle
    d = tmp_path / "b"
    if not d.exists():
        shutil.copytree(src, d)
    _check_manifest(d, b"[" * depth + b"]" * depth)


# ---------------------------------------------------------------- image and DICOM decoding
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    u8 = real_u8()[::8, ::8]  # 94 x 130: small seeds keep every example fast
    Image.fromarray(u8).save(d / "s.png")
    Image.fromarray(u8).save(d / "s.jpeg", quality=80)
    Image.fromarray(u8.astype(np.uint16) * 257).save(d / "s16.png")
    write_dicom(d / "s.dcm", u8, WindowCenter=128, WindowWidth=256)
    write_dicom(d / "s16.dcm", u8.astype(np.uint16) * 16, bits=16, bits_stored=12, photometric="MONOCHROME1",
                RescaleSlope=1, RescaleIntercept=0)
    return {p.name: p.read_bytes() for p in d.iterdir()}


def _check_image(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        g = load_grey(path)
    except EdgeCXRError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        return
    assert g.ndim == 2 and g.dtype == np.float32 and np.all(np.isfinite(g)) and g.min() >= 0 and g.max() <= 1


@given(seed=st.sampled_from(["s.png", "s.jpeg", "s16.png", "s.dcm", "s16.dcm"]), edits=EDITS)
def test_images_and_dicoms_with_mutated_bytes(seeds, tmp_path, seed, edits):
    _check_image(tmp_path / f"x{Path(seed).suffix}", _mutate(seeds[seed], edits))


@given(data=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpeg", ".dcm"]))
def test_random_bytes_as_images(tmp_path, data, suffix):
    head = {".png": b"\x89PNG\r\n\x1a\n", ".jpeg": b"\xff\xd8\xff", ".dcm": b"\0" * 128 + b"DICM"}[suffix]
    _check_image(tmp_path / f"x{suffix}", head + data)


@given(attrs=st.fixed_dictionaries({}, optional={
    "Modality": st.sampled_from(["CR", "DX", "CT", "", "dx", "MG"]),
    "BodyPartExamined": st.sampled_from(["CHEST", "SKULL", "", "chest"]),
    "ViewPosition": st.sampled_from(["PA", "AP", "LL", "RL", "LAT", ""]),
    "WindowCenter": st.floats(-1e6, 1e6), "WindowWidth": st.floats(-10, 1e6),
    "VOILUTFunction": st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "X"]),
    "RescaleSlope": st.floats(-5, 5), "RescaleIntercept": st.floats(-5000, 5000),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"]),
    "BitsStored": st.integers(0, 17), "PixelRepresentation": st.integers(0, 2),
    "NumberOfFrames": st.integers(0, 3), "SamplesPerPixel": st.integers(0, 4)}))
def test_dicom_header_values(seeds, tmp_path, attrs):
    u8 = real_u8()[::8, ::8]
    try:
        p = write_dicom(tmp_path / "h.dcm", u8, **{k: (str(v) if isinstance(v, float) else v) for k, v in attrs.items()})
    except Exception:  # pydicom will not write some combinations; those are not inputs
        return
    _check_image(p, p.read_bytes())


# ---------------------------------------------------------------- tar unpacking
MEMBER = st.tuples(
    st.sampled_from(["b/model.onnx", "b/manifest.json", "b/../evil", "/abs/b", "b/.hidden", "b/sub/x", "b", "b/",
                     "c/x", "b/" + "n" * 300, "b/a\\b", "./b/x", ""]),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                     tarfile.FIFOTYPE]),
    st.binary(max_size=64))


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            if kind == tarfile.REGTYPE:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                ti.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                t.addfile(ti)
    return buf.getvalue()


def _outside(root: Path) -> set[str]:
    """Everything under root but outside root/w."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "w"}


def _check_unpack(tmp_path: Path, data: bytes) -> None:
    work = tmp_path / "w"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    arc = work / "a.tar"
    arc.write_bytes(data)
    dest = work / "dest"
    before = _outside(tmp_path)
    try:
        unpack(arc, dest)
    except EdgeCXRError as e:
        assert "\n" not in str(e)
    from edgecxr.device.link.board import BoardService

    svc = BoardService(work / "store")
    try:
        svc.install_image_archive(arc)
    except EdgeCXRError as e:
        assert "\n" not in str(e)
    # nothing was written outside the work folder, and nothing inside is a link
    assert _outside(tmp_path) == before
    assert not [p for p in work.rglob("*") if p.is_symlink()]


@given(members=st.lists(MEMBER, max_size=5))
def test_tar_archives_with_any_members(tmp_path, members):
    _check_unpack(tmp_path, _tar(members))


@given(edits=EDITS)
def test_tar_archives_with_mutated_bytes(tmp_path, edits):
    data = _tar([("b/model.onnx", tarfile.REGTYPE, b"x" * 50), ("b/manifest.json", tarfile.REGTYPE, b"{}")])
    _check_unpack(tmp_path, _mutate(data, edits))


# FILE_BEGIN / FILE_END bodies are JSON objects (Message.json refuses anything else, see below)
OBJ = st.dictionaries(st.text(max_size=8), JSON, max_size=4)


@given(meta=st.one_of(OBJ, st.fixed_dictionaries({"name": st.text(max_size=8) | JSON, "size": JSON | st.integers(),
                                                  "sha256": st.just("a" * 64) | JSON, "id": JSON})),
       chunks=st.lists(st.binary(max_size=40), max_size=3), end=OBJ)
@example(meta={"name": "0\n0", "size": 1, "sha256": "a" * 64, "id": 1}, chunks=[], end={})  # found by the fuzz profile
def test_file_receiver_with_any_messages(tmp_path, meta, chunks, end):
    r = FileReceiver(tmp_path / "in", max_size=10_000)
    for step in ("begin", *(["chunk"] * len(chunks)), "finish"):
        try:
            if step == "begin":
                r.begin(meta)
            elif step == "chunk":
                r.write_chunk(chunks.pop())
            else:
                r.finish(end)
        except EdgeCXRError as e:
            assert "\n" not in str(e)
    r.discard()
    assert not [p for p in (tmp_path / "in").rglob("*") if p.is_file() and p.parent == tmp_path / "in"]


@given(payload=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()) |
       st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n))
@example(payload=b"[" * 50_000 + b"]" * 50_000)  # a RecursionError escaped Message.json before
def test_message_json_only_link_errors(payload):
    from edgecxr.device.link.errors import LinkError
    from edgecxr.device.link.transport import Message

    try:
        assert isinstance(Message(5, payload).json(), dict)
    except LinkError as e:
        assert "\n" not in str(e)


# ---------------------------------------------------------------- serial frame decoder
FRAME = st.builds(Frame, type=st.integers(0, 255), seq=st.integers(0, 2**32 - 1), payload=st.binary(max_size=300),
                  flags=st.integers(0, 255), version=st.integers(0, 255))


def _feed_in_pieces(dec: Decoder, data: bytes, cuts: list[int]) -> list[Frame]:
    out, pos = [], 0
    for c in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
        out += dec.feed(data[pos:c])
        pos = c
    return out


@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_decoder_never_raises_on_noise(data, cuts):
    dec = Decoder(max_payload=1024)
    _feed_in_pieces(dec, data, cuts)
    dec.flush_stale()
    s = dec.stats
    assert s.errors == 0
    assert s.bytes_in == len(data) and s.bytes_in == s.frame_bytes + s.skipped_bytes + dec.pending


@given(frames=st.lists(FRAME, max_size=6), noise=st.lists(st.binary(max_size=40), max_size=7),
       cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_frames_between_noise_come_out_whole_and_in_order(frames, noise, cuts):
    noise = [n.replace(MAGIC[:1], b"") for n in noise]  # noise without the magic's first byte cannot fake a start
    parts = []
    for i, f in enumerate(frames):
        parts.append(noise[i] if i < len(noise) else b"")
        parts.append(f.encode())
    parts.append(noise[-1] if noise else b"")
    dec = Decoder(max_payload=1024)
    got = _feed_in_pieces(dec, b"".join(parts), cuts)
    assert got == frames
    assert dec.stats.errors == 0


@given(frame=FRAME, edits=EDITS)
def test_a_damaged_frame_is_dropped_and_the_next_one_still_decodes(frame, edits):
    good = encode_frame(3, b"next", seq=7)
    bad = _mutate(frame.encode(), edits)
    dec = Decoder(max_payload=1024)
    got = dec.feed(bad + good)
    for _ in range(len(bad) + len(good)):  # the line goes quiet: partial frames are given up one by one
        if not dec.pending:
            break
        got += dec.flush_stale()
    assert dec.stats.errors == 0 and dec.pending == 0
    assert got[-1:] == [Frame(type=3, seq=7, payload=b"next")]
