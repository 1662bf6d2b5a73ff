"""Hypothesis fuzzing of the HTTP door's parsers, in the style of tests/test_fuzz.py: the Open Inference
Protocol request parser (JSON and binary bodies, any header length) and the STOW-RS multipart
splitter. No input may raise anything but their one-line errors (OIPError, ValueError, MediaTypeError);
what they accept must be consistent (shapes match the data, parts come back byte for byte)."""

from __future__ import annotations

import json
import os

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgecxr.device.serve import oip, stow

# settings of their own (not a profile: loading one here would change tests/test_fuzz.py's too)
FUZZ = settings(max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]) \
    if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else \
    settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=16)
DT = st.sampled_from([*oip.DTYPES, "FP8", "", "fp32"])
SHAPE = st.lists(st.integers(-2, 6), max_size=5) | JSON


def _parse(body: bytes, hl: int | None) -> None:
    try:
        req = oip.parse_request(body, hl)
    except oip.OIPError as e:
        assert 400 <= e.status < 500 and "\n" not in e.message and e.message
        return
    for t in req.inputs:
        n = int(np.prod(t.shape)) if t.shape else 1
        if t.datatype == "BYTES":
            assert len(t.data) == n and all(isinstance(b, bytes) for b in t.data)
        else:
            assert list(t.data.shape) == t.shape


@FUZZ
@given(obj=JSON)
@example(obj={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [float("nan")]}]})
@example(obj={"inputs": [{"name": "x", "datatype": "INT8", "shape": [2], "data": [1, 999]}]})
@example(obj={"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]})
def test_any_json_body(obj):
    _parse(json.dumps(obj).encode(), None)


@FUZZ
@given(name=st.text(max_size=8), dt=DT, shape=SHAPE, data=JSON, size=st.none() | st.integers(-3, 64),
       tail=st.binary(max_size=64), hl_delta=st.none() | st.integers(-8, 8), outputs=JSON)
def test_inference_requests_near_the_real_shape(name, dt, shape, data, size, tail, hl_delta, outputs):
    spec = {"name": name, "datatype": dt, "shape": shape, "data": data}
    if size is not None:
        spec = {"name": name, "datatype": dt, "shape": shape, "parameters": {"binary_data_size": size}}
    head = json.dumps({"inputs": [spec], "outputs": outputs}).encode()
    hl = None if hl_delta is None else len(head) + hl_delta
    _parse(head + tail, hl)


@FUZZ
@given(raw=st.binary(max_size=300), hl=st.none() | st.integers(-5, 400))
def test_random_bytes(raw, hl):
    _parse(raw, hl)


def test_binary_round_trip_of_a_real_request():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
    files = [b"\x00\xff" * 5, b""]
    head = json.dumps({"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 2], "parameters": {"binary_data_size": x.nbytes}},
        {"name": "image", "datatype": "BYTES", "shape": [2],
         "parameters": {"binary_data_size": len(oip.join_bytes(files))}}]}).encode()
    req = oip.parse_request(head + x.tobytes() + oip.join_bytes(files), len(head))
    assert np.array_equal(req.inputs[0].data, x) and req.inputs[1].data == files


PART = st.binary(max_size=200)


@FUZZ
@given(parts=st.lists(PART, max_size=4), boundary=st.text(st.characters(min_codepoint=48, max_codepoint=122),
                                                          min_size=1, max_size=40))
def test_multipart_round_trip(parts, boundary):
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts) + \
        b"--" + b + b"--\r\n"
    if any((b"\r\n--" + b) in (b"\r\n" + p) for p in parts):  # a part holding the delimiter is not valid MIME
        return
    try:
        got = stow.split_multipart(body, boundary)
    except ValueError:
        assert not parts
        return
    assert [p for _, p in got] == parts
    assert all(h.get("content-type") == "application/dicom" for h, _ in got)


@FUZZ
@given(body=st.binary(max_size=400), boundary=st.sampled_from(["b", "xyz", "--", "a" * 70]))
@example(body=b"--b\r\n\r\n\r\n--b--", boundary="b")
@example(body=b"--b\r\nno colon\r\n\r\nx\r\n--b--", boundary="b")
def test_multipart_random_bodies(body, boundary):
    try:
        stow.split_multipart(body, boundary)
    except ValueError as e:
        assert "\n" not in str(e)


@FUZZ
@given(ct=st.text(max_size=120))
@example(ct='multipart/related; type="application/dicom"; boundary="a;b"')
@example(ct="multipart/related; type=application/dicom+json; boundary=x")
def test_content_types(ct):
    try:
        stow.boundary_of(ct)
    except stow.MediaTypeError as e:
        assert e.status in (400, 415) and e.message
