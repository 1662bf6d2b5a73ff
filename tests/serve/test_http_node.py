"""The HTTP door of `edgecxr serve`, as clinic software meets it: the node is started on loopback ports
and driven by clients nobody here wrote: Triton's `tritonclient.http` (KServe v2 / Open Inference
Protocol, JSON and binary tensors), `dicomweb-client` (STOW-RS), prometheus-client's parser, and plain
HTTP for what a hostile client sends. The same process also has its DICOM door open: one worker, one
spool, one results log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import MINI
from tests.hostile import png_bomb, write_dicom
from tests.serve.harness import free_port as _free_port
from tests.serve.harness import study as _study
from tests.serve.harness import xray as _xray

tritonclient_http = pytest.importorskip("tritonclient.http")
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # for urllib; tritonclient adds to the dict it is given: auth()


def auth() -> dict[str, str]:
    return dict(AUTH)


class HttpNode:
    def __init__(self, bundle: Path, spool: Path, tmp: Path, queue: int = 4, max_mb: float = 8):
        self.bundle, self.spool = bundle, spool
        self.port, self.dicom_port = _free_port(), _free_port()
        self.token = tmp / "token"
        self.token.write_text(TOKEN + "\n")
        self.queue, self.max_mb = queue, max_mb
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgecxr", "serve", str(self.bundle), "--dicom-port", str(self.dicom_port),
             "--http", f"127.0.0.1:{self.port}", "--spool", str(self.spool), "--allow-unsigned",
             "--token-file", str(self.token), "--http-queue", str(self.queue), "--http-max-mb", str(self.max_mb)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 120:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.proc.stderr.read()}")
            try:
                if urllib.request.urlopen(self.url + "/v2/health/ready", timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("serve's HTTP door was not ready within 120 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def lines(self) -> list[dict]:
        f = self.spool / "results.jsonl"
        return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body) of one plain HTTP request."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def one_line_error(status: int, body: bytes, *needles: str) -> str:
    assert 400 <= status < 500, (status, body[:300])
    err = json.loads(body)["error"]
    assert isinstance(err, str) and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)
    return err


@pytest.fixture(scope="module")
def node(bundles, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("httpnode")
    n = HttpNode(bundles["nuc-int8"], tmp / "spool", tmp)
    n.start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def client(node):
    return tritonclient_http.InferenceServerClient(f"127.0.0.1:{node.port}")


def _files() -> list[Path]:
    return [sorted((MINI / c).iterdir())[i] for c in ("NORMAL", "PNEUMONIA") for i in (0, 1)]


def _predict(bundle: Path, files: list[Path]) -> dict[str, dict]:
    p = subprocess.run([sys.executable, "-m", "edgecxr", "predict", str(bundle), *map(str, files), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return {json.loads(ln)["file"]: json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")}


def test_oip_health_metadata_and_infer_match_predict(node, client, bundles):
    name = bundles["nuc-int8"].name
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and {i["name"] for i in meta["inputs"]} == {"image", "input"}
    assert {o["name"] for o in meta["outputs"]} >= {"probability", "call", "threshold"}
    assert client.get_server_metadata()["name"] == "edgecxr"

    files = _files()
    ref = _predict(bundles["nuc-int8"], files)
    th = tritonclient_http
    for binary in (True, False):  # outputs in the binary tensor extension (tritonclient's default), then JSON
        inp = th.InferInput("image", [len(files)], "BYTES")  # files are not UTF-8: binary is the only way in
        inp.set_data_from_numpy(np.array([f.read_bytes() for f in files], dtype=object))
        outs = [th.InferRequestedOutput(o, binary_data=binary) for o in ("probability", "call", "threshold")]
        r = client.infer(name, [inp], outputs=outs, headers=auth())
        probs, calls = r.as_numpy("probability"), r.as_numpy("call")
        for f, p, c in zip(files, probs, calls, strict=True):
            want = ref[str(f)]
            assert abs(float(p) - want["prob"]) < 1e-6, (f, p, want)
            assert (c.decode() if isinstance(c, bytes) else c) == want["label"], (f, c, want)
        assert np.allclose(r.as_numpy("threshold"), ref[str(files[0])]["threshold"], atol=1e-6)

    # the preprocessed tensor, as the manifest describes it, gives the same probability
    from edgecxr.device.bundle import verify
    from edgecxr.shared.imageio import load_grey
    from edgecxr.shared.preprocess import preprocess_grey

    pp = verify(bundles["nuc-int8"]).preprocess
    x = np.stack([preprocess_grey(load_grey(f), pp) for f in files[:2]]).astype(np.float32)
    for binary in (True, False):
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        r = client.infer(name, [inp], outputs=[th.InferRequestedOutput("probability", binary_data=binary)],
                         headers=auth())
        assert np.allclose(r.as_numpy("probability"), [ref[str(f)]["prob"] for f in files[:2]], atol=1e-6)

    # a bad shape, a bad datatype and an unknown model: 4xx with the reason
    bad = th.InferInput("input", [1, 3, 100, 224], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 100, 224), np.float32))
    with pytest.raises(th.InferenceServerException, match="shape") as e:
        client.infer(name, [bad], headers=auth())
    assert e.value.status() == "400"
    bad = th.InferInput("input", [1, 3, 224, 224], "FP16")
    bad.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float16))
    with pytest.raises(th.InferenceServerException, match="datatype"):
        client.infer(name, [bad], headers=auth())
    with pytest.raises(th.InferenceServerException, match="unknown model") as e:
        client.infer("no-such-model", [inp], headers=auth())
    assert e.value.status() == "404"
    # without the token: refused
    with pytest.raises(th.InferenceServerException) as e:
        client.infer(name, [inp])
    assert e.value.status() == "401"

    # the results log has every reading, and no patient name
    got = [r for r in node.lines() if r.get("door") == "http"]
    assert len(got) >= 2 * len(files) + 2 and all(r["status"] == "read" for r in got)


def test_heatmap_output_is_a_png(node, client, bundles):
    th = tritonclient_http
    f = _files()[2]
    inp = th.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([f.read_bytes()], dtype=object))
    r = client.infer(bundles["nuc-int8"].name, [inp], outputs=[th.InferRequestedOutput("probability"),
                                                                th.InferRequestedOutput("heatmap")], headers=auth())
    png = r.as_numpy("heatmap")[0]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_stow_rs_stores_reads_and_reports(node, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    chest = write_dicom(tmp_path / "chest.dcm", _xray("PNEUMONIA"), **_study())
    ct = write_dicom(tmp_path / "ct.dcm", _xray("NORMAL"), SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT",
                     **_study())
    ds = pydicom.dcmread(chest)
    ct_ds = pydicom.dcmread(ct)
    ct_ds.file_meta.MediaStorageSOPClassUID = ct_ds.SOPClassUID
    web = DICOMwebClient(url=node.url + "/dicomweb", headers=auth())
    resp = web.store_instances([ds])
    refs = resp.ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [ds.SOPInstanceUID]
    # some stored, some not: 202 with the failure and its reason
    import requests

    body, ctype = _multipart([chest.read_bytes(), _bytes(ct_ds)])
    st, _, out = request(node.url + "/dicomweb/studies", body, {**AUTH, "Content-Type": ctype}, "POST")
    assert st == 202, (st, out)
    j = json.loads(out)
    assert j["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]  # SOP class not supported
    # none stored: 409; a wrong media type: 415
    body, ctype = _multipart([_bytes(ct_ds)])
    assert request(node.url + "/dicomweb/studies", body, {**AUTH, "Content-Type": ctype}, "POST")[0] == 409
    st, _, out = request(node.url + "/dicomweb/studies", chest.read_bytes(),
                         {**AUTH, "Content-Type": "application/dicom"}, "POST")
    one_line_error(st, out, "multipart/related")
    assert st == 415
    r = requests.post(node.url + "/dicomweb/studies", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 401
    # the worker reads the STOW instance and writes its SR into the source study
    t0 = time.time()
    while time.time() - t0 < 60:
        done = [r for r in node.lines() if r.get("sop_instance_uid") == ds.SOPInstanceUID and r.get("seq")]
        if done:
            break
        time.sleep(0.3)
    assert done and done[0]["status"] == "read" and done[0]["door"] == "stow", node.lines()[-3:]
    sr = pydicom.dcmread(node.spool / "sr" / f"{done[0]['sr_instance_uid']}.dcm")
    assert sr.StudyInstanceUID == ds.StudyInstanceUID and sr.Modality == "SR"
    # logs hold UIDs, never names: not the results log, not the node's own log
    assert str(ds.PatientName) not in (node.spool / "results.jsonl").read_text()


def _bytes(ds) -> bytes:
    import io

    b = io.BytesIO()
    ds.save_as(b, enforce_file_format=True)
    return b.getvalue()


def _multipart(parts: list[bytes], boundary: str = "edgecxr-test-boundary") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _png(path: Path, u8: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(u8).save(path)
    return path


def test_hostile_requests_get_one_clear_4xx(node, bundles, tmp_path):
    url = f"{node.url}/v2/models/{bundles['nuc-int8'].name}/infer"

    def infer_bytes(data: bytes, headers: dict | None = None):
        head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": 4 + len(data)}}]}).encode()
        body = head + len(data).to_bytes(4, "little") + data
        return request(url, body, {**AUTH, "Inference-Header-Content-Length": str(len(head)), **(headers or {})},
                       "POST")

    png = sorted((MINI / "NORMAL").iterdir())[0]  # a JPEG, in fact
    u8 = _xray("NORMAL")
    three = write_dicom(tmp_path / "three.dcm", np.stack([u8, u8, u8]), frames=3, **_study())
    skull = write_dicom(tmp_path / "skull.dcm", u8, BodyPartExamined="SKULL", **_study())
    cases = {
        "empty body": (request(url, b"", AUTH, "POST"), "empty"),
        "random bytes as JSON": (request(url, os.urandom(2000), AUTH, "POST"), "JSON"),
        "random bytes as a file": (infer_bytes(np.random.default_rng(0).bytes(5000)), "input 'image'"),
        "truncated image": (infer_bytes(png.read_bytes()[:600]), "input 'image'"),
        "truncated PNG": (infer_bytes(_png(tmp_path / "x.png", u8).read_bytes()[:2000]), "input 'image'"),
        "decompression bomb": (infer_bytes(png_bomb(tmp_path / "bomb.png").read_bytes()), "megapixels"),
        "3-frame DICOM": (infer_bytes(three.read_bytes()), "3 frames"),
        "skull DICOM": (infer_bytes(skull.read_bytes()), "CHEST"),
        "JSON nested deep": (request(url, b"[" * 5000 + b"]" * 5000, AUTH, "POST"), ""),
        "huge JSON": (request(url, b'{"inputs": [' + b"0," * (5 * 1024 * 1024) + b"0]}", AUTH, "POST"), "limit"),
        "wrong token": (request(url, b"{}", {"Authorization": "Bearer wrong-token-wrong-token"}, "POST"), "token"),
        "header length past the body": (request(url, b"{}", {**AUTH, "Inference-Header-Content-Length": "99"},
                                                "POST"), "Inference-Header-Content-Length"),
        "traversal in the model name": (request(f"{node.url}/v2/models/..%2F..%2Fetc%2Fpasswd", None, AUTH), ""),
        "traversal in the path": (request(f"{node.url}/../../etc/passwd", None, AUTH), "no such route"),
        "traversal to the spool": (request(f"{node.url}/spool/results.jsonl", None, AUTH), "no such route"),
    }
    for what, ((status, _, body), needle) in cases.items():
        one_line_error(status, body, *([needle] if needle else []))
        assert b"root:" not in body, what
    assert cases["huge JSON"][0][0] == 413 and cases["wrong token"][0][0] == 401
    assert cases["skull DICOM"][0][0] == 422
    assert all(cases[k][0][0] == 404 for k in cases if k.startswith("traversal"))
    # the node is still up and still reads
    st, _, _ = request(node.url + "/v2/health/ready")
    assert st == 200 and node.proc.poll() is None


def test_metrics_parse_and_count_what_was_sent(node, client, bundles):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple, float]:
        st, _, body = request(node.url + "/metrics")
        assert st == 200
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    name = bundles["nuc-int8"].name
    key = ("ovms_requests_success_total", tuple(sorted({"api": "KServe", "interface": "REST", "method": "ModelInfer",
                                                        "name": name, "version": "1"}.items())))
    read = ("edgecxr_instances_read_total", (("door", "http"),))
    before = scrape()
    th = tritonclient_http
    for f in _files()[:3]:
        inp = th.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([f.read_bytes()], dtype=object))
        client.infer(name, [inp], headers=auth())
    after = scrape()
    assert after[key] - before.get(key, 0) == 3
    assert after[read] - before.get(read, 0) == 3
    assert ("edgecxr_queue_depth", ()) in after
    assert any(k[0] == "ovms_inference_time_us_count" for k in after)


def test_full_queue_answers_503_and_the_node_goes_on(node, bundles):
    th = tritonclient_http
    f = _files()[0]
    codes: list[int] = []

    def one():
        c = th.InferenceServerClient(f"127.0.0.1:{node.port}", network_timeout=120)
        inp = th.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([f.read_bytes()], dtype=object))
        try:
            c.infer(bundles["nuc-int8"].name, [inp], outputs=[th.InferRequestedOutput("heatmap")], headers=auth())
            codes.append(200)
        except th.InferenceServerException as e:
            codes.append(int(e.status() or 0))

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    st, hd, body = request(node.url + "/metrics")
    assert b"edgecxr_http_rejected_busy_total" in body
    assert request(node.url + "/v2/health/ready")[0] == 200


def test_page_needs_the_token_and_sets_a_cookie(node):
    st, _, body = request(node.url + "/")
    assert st == 401 and b"token" in body
    st, _, body = request(node.url + "/", headers=auth())
    assert st == 200 and b"not a diagnosis" in body.lower()
    assert request(node.url + "/api/readings")[0] == 401


def test_stow_instance_acknowledged_survives_kill_9(bundles, tmp_path):
    """An instance STOW-RS acknowledged is read after kill -9 and a restart: one SR, not none, not two."""
    n = HttpNode(bundles["nuc-int8"], tmp_path / "spool", tmp_path)
    n.start()
    try:
        films = [write_dicom(tmp_path / f"f{i}.dcm", _xray("PNEUMONIA" if i % 2 else "NORMAL"), **_study())
                 for i in range(6)]
        body, ctype = _multipart([f.read_bytes() for f in films])
        st, _, out = request(n.url + "/dicomweb/studies", body, {**AUTH, "Content-Type": ctype}, "POST")
        assert st == 200, out
        n.proc.send_signal(signal.SIGKILL)  # right after the answer: the worker is still reading
        n.proc.wait(30)
        n.start()
        uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in films}
        t0 = time.time()
        while time.time() - t0 < 90:
            read = [r for r in n.lines() if r.get("status") == "read" and r.get("sop_instance_uid") in uids]
            if len({r["sop_instance_uid"] for r in read}) == len(uids):
                break
            time.sleep(0.5)
        assert sorted(r["sop_instance_uid"] for r in read) == sorted(uids)  # each once
        assert len(list((n.spool / "sr").glob("*.dcm"))) == len(uids)
    finally:
        n.stop()


def test_https_with_tls_cert_and_key(bundles, tmp_path):
    """--tls-cert/--tls-key: the door speaks HTTPS (a certificate the client verifies), and not plain HTTP."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr", "serve", str(bundles["nuc-int8"]), "--dicom-port", "0",
                             "--http", f"127.0.0.1:{port}", "--spool", str(tmp_path / "spool"), "--allow-unsigned",
                             "--tls-cert", str(cert), "--tls-key", str(key)], stderr=subprocess.PIPE, text=True)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        t0, body = time.time(), None
        while body is None:
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 120, "no HTTPS answer in 120 s"
            try:
                body = urllib.request.urlopen(f"https://127.0.0.1:{port}/v2/health/ready", context=ctx, timeout=5).read()
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert json.loads(body) == {"ready": True}
        c = tritonclient_http.InferenceServerClient(f"127.0.0.1:{port}", ssl=True,
                                                    ssl_options={"ca_certs": str(cert)})
        inp = tritonclient_http.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([_files()[0].read_bytes()], dtype=object))
        assert c.infer(bundles["nuc-int8"].name, [inp]).as_numpy("call")[0] in (b"NORMAL", b"PNEUMONIA")
        with pytest.raises((urllib.error.URLError, ConnectionError, http_client_errors())):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def http_client_errors():
    import http.client

    return http.client.HTTPException
