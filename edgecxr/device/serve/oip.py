"""The Open Inference Protocol (KServe v2) on the wire: request parsing and response encoding.

Both encodings of the specification are handled:

* JSON tensors: ``{"inputs": [{"name", "datatype", "shape", "data"}], "outputs": [...]}``, ``data``
  flat or nested in row-major order;
* the binary tensor data extension (what ``tritonclient``'s ``set_data_from_numpy`` sends by default):
  the JSON header is the first ``Inference-Header-Content-Length`` bytes of the body, and each input
  with ``parameters.binary_data_size`` has its raw little-endian bytes after it, in input order. A
  BYTES tensor is a run of elements, each a 4-byte little-endian length and then its bytes.

Outputs go back in binary when the request asks (``parameters.binary_data`` on the output, or
``binary_data_output`` on the request), else as JSON. Everything here is pure: a body in, tensors or
an :class:`OIPError` (the 4xx status and one line) out, so the parser can be fuzzed on its own.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}
NUMPY_TO_OIP = {np.dtype(v).str: k for k, v in DTYPES.items() if v is not object}
MAX_ELEMENTS = 64 * 3 * 512 * 512  # more than any request this model can need (a batch of 64 at 512 px)
MAX_DEPTH = 64  # JSON nesting


class OIPError(Exception):
    """A request the server cannot serve: ``status`` (4xx) and one line."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = " ".join(str(message).split())[:300], status


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]  # numbers as an array of `shape`; BYTES as a flat list of elements
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[str] | None  # None: every default output
    binary: dict[str, bool]  # per output name: binary data in the response
    binary_default: bool


def _depth(x: Any, d: int = 0) -> int:
    if d > MAX_DEPTH:
        return d
    if isinstance(x, list):
        return max([_depth(v, d + 1) for v in x] or [d + 1])
    if isinstance(x, dict):
        return max([_depth(v, d + 1) for v in x.values()] or [d + 1])
    return d


def _header(body: bytes, header_len: int | None) -> tuple[dict[str, Any], bytes]:
    if not body:
        raise OIPError("empty request body; an inference request is a JSON object")
    if header_len is not None:
        if header_len < 0 or header_len > len(body):
            raise OIPError(f"Inference-Header-Content-Length is {header_len}, but the body has {len(body)} bytes")
        head, rest = body[:header_len], body[header_len:]
    else:
        head, rest = body, b""
    try:
        obj = json.loads(head.decode("utf-8"))
    except UnicodeDecodeError:
        raise OIPError("the request header is not UTF-8 JSON (binary data needs Inference-Header-Content-Length)") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise OIPError(f"the request is not valid JSON ({str(e).splitlines()[0][:120] if str(e) else 'too deep'})") from None
    if not isinstance(obj, dict):
        raise OIPError("the request must be a JSON object with \"inputs\"")
    if _depth(obj) > MAX_DEPTH:
        raise OIPError(f"the request JSON is nested deeper than {MAX_DEPTH} levels")
    return obj, rest


def _shape(v: Any, name: str) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in v):
        raise OIPError(f"input {name!r}: shape must be a list of whole numbers")
    if any(d < 0 for d in v) or len(v) > 8:
        raise OIPError(f"input {name!r}: shape {v} is not a tensor shape (8 dimensions at most, none negative)")
    if math.prod(v) > MAX_ELEMENTS:
        raise OIPError(f"input {name!r}: shape {v} has more than {MAX_ELEMENTS} elements", 413)
    return list(v)


def _flatten(data: Any, name: str) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        else:
            out.append(x)
        if len(out) > MAX_ELEMENTS:
            raise OIPError(f"input {name!r}: more than {MAX_ELEMENTS} data elements", 413)
    return out


def split_bytes(raw: bytes, name: str) -> list[bytes]:
    """A binary BYTES tensor: each element a 4-byte little-endian length and its bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise OIPError(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (n,) = struct.unpack_from("<I", raw, i)
        i += 4
        if i + n > len(raw):
            raise OIPError(f"input {name!r}: BYTES element of {n} bytes, but only {len(raw) - i} follow")
        out.append(raw[i:i + n])
        i += n
    return out


def join_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def _tensor(spec: Any, rest: memoryview, pos: int) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise OIPError("each entry of \"inputs\" must be an object with name, datatype, shape and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name or len(name) > 128:
        raise OIPError("an input has no name")
    dt = spec.get("datatype")
    if dt not in DTYPES:
        raise OIPError(f"input {name!r}: datatype {str(dt)[:20]!r} is not an Open Inference Protocol datatype "
                       f"({', '.join(DTYPES)})")
    shape = _shape(spec.get("shape"), name)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise OIPError(f"input {name!r}: parameters must be an object")
    n = math.prod(shape)
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise OIPError(f"input {name!r}: binary_data_size must be a whole number")
        if pos + size > len(rest):
            raise OIPError(f"input {name!r}: binary_data_size is {size}, but only {len(rest) - pos} bytes of "
                           "binary data follow the header")
        raw = bytes(rest[pos:pos + size])
        pos += size
        if dt == "BYTES":
            data: Any = split_bytes(raw, name)
            if len(data) != n:
                raise OIPError(f"input {name!r}: shape {shape} needs {n} BYTES elements, the data has {len(data)}")
        else:
            item = np.dtype(DTYPES[dt]).itemsize
            if size != n * item:
                raise OIPError(f"input {name!r}: shape {shape} of {dt} needs {n * item} bytes, the data has {size}")
            data = np.frombuffer(raw, dtype=np.dtype(DTYPES[dt]).newbyteorder("<")).reshape(shape)
    else:
        if "data" not in spec:
            raise OIPError(f"input {name!r} has no data (JSON \"data\", or binary_data_size with binary data)")
        flat = _flatten(spec["data"], name)
        if len(flat) != n:
            raise OIPError(f"input {name!r}: shape {shape} needs {n} elements, the data has {len(flat)}")
        if dt == "BYTES":
            if not all(isinstance(v, str) for v in flat):
                raise OIPError(f"input {name!r}: BYTES data in JSON must be strings")
            data = [v.encode("utf-8", "surrogateescape") for v in flat]
        else:
            ok = (bool,) if dt == "BOOL" else (int, float) if dt.startswith("FP") else (int,)
            if not all(isinstance(v, ok) and (dt == "BOOL" or not isinstance(v, bool)) for v in flat):
                raise OIPError(f"input {name!r}: {dt} data must be {'true/false' if dt == 'BOOL' else 'numbers'}")
            try:
                data = np.asarray(flat, dtype=DTYPES[dt]).reshape(shape)
            except (OverflowError, ValueError) as e:
                raise OIPError(f"input {name!r}: data does not fit {dt} ({str(e)[:80]})") from None
    return Tensor(name, dt, shape, data, params), pos


def parse_request(body: bytes, header_len: int | None = None) -> InferRequest:
    """Parse one inference request body; raise OIPError (4xx, one line) on anything malformed."""
    obj, rest = _header(body, header_len)
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise OIPError("the request has no \"inputs\" list")
    if len(inputs) > 16:
        raise OIPError(f"the request has {len(inputs)} inputs; this model takes one")
    rid = obj.get("id")
    if rid is not None and not isinstance(rid, str):
        raise OIPError("\"id\" must be a string")
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise OIPError("request parameters must be an object")
    binary_default = params.get("binary_data_output") is True
    view, pos, tensors = memoryview(rest), 0, []
    for spec in inputs:
        t, pos = _tensor(spec, view, pos)
        tensors.append(t)
    if pos != len(rest):
        raise OIPError(f"{len(rest) - pos} bytes of binary data after the header belong to no input")
    outputs, binary = None, {}
    if obj.get("outputs") is not None:
        outs = obj["outputs"]
        if not isinstance(outs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outs):
            raise OIPError("\"outputs\" must be a list of objects with a name")
        outputs = [o["name"] for o in outs]
        for o in outs:
            p = o.get("parameters") or {}
            if not isinstance(p, dict):
                raise OIPError(f"output {o['name']!r}: parameters must be an object")
            binary[o["name"]] = p.get("binary_data", binary_default) is True
    return InferRequest(rid[:128] if rid else None, tensors, outputs, binary, binary_default)


def encode_response(model: str, version: str, rid: str | None, outputs: list[Tensor], binary: dict[str, bool],
                    binary_default: bool) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (Inference-Header-Content-Length when binary follows)."""
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if rid:
        head["id"] = rid
    blobs: list[bytes] = []
    for t in outputs:
        o: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary.get(t.name, binary_default):
            raw = join_bytes(list(t.data)) if t.datatype == "BYTES" else \
                np.ascontiguousarray(t.data, dtype=np.dtype(DTYPES[t.datatype]).newbyteorder("<")).tobytes()
            o["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif t.datatype == "BYTES":
            o["data"] = [b.decode("utf-8", "replace") for b in t.data]
        else:
            o["data"] = np.asarray(t.data).reshape(-1).tolist()
        head["outputs"].append(o)
    js = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return js, {}
    return js + b"".join(blobs), {"Inference-Header-Content-Length": str(len(js))}
