"""`edgecxr serve` as a clinic meets it: started on a loopback port, driven by dcmtk's echoscu and
storescu (clients nobody here wrote), real X-rays wrapped as DX files, every SR checked by dicom3tools'
dciodvfy, and `kill -9` in the middle: each acknowledged instance has exactly one SR."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import MINI
from tests.hostile import write_dicom

TOOLS = ("storescu", "echoscu", "dciodvfy")
CALLING = "TESTSCU"


def _need_tools():
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing DICOM tools {missing}: `make serve-deps` installs them")
        pytest.skip(f"missing DICOM tools {missing} (make serve-deps)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _study(**extra) -> dict:
    return {"PatientName": "Test^Patient", "PatientID": "P0001", "PatientBirthDate": "20150101", "PatientSex": "F",
            "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "AccessionNumber": "A1",
            "StudyDate": "20261203", "StudyTime": "081500", "StudyID": "1", "ReferringPhysicianName": "",
            "SeriesNumber": 1, "InstanceNumber": 1, **extra}


def _xray(name: str) -> np.ndarray:
    from PIL import Image

    files = sorted((MINI / name).iterdir())
    with Image.open(files[0]) as im:
        return np.asarray(im.convert("L"))


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    """Validation X-rays as DX files: 8 bit, 16 bit MONOCHROME1 with a VOI window, and refusals."""
    d = tmp_path_factory.mktemp("films")
    a, b = _xray("PNEUMONIA"), _xray("NORMAL")
    u16 = (65535 - a.astype(np.uint16) * 257)  # MONOCHROME1: bright is dark
    return {
        "chest8": write_dicom(d / "chest8.dcm", a, **_study()),
        "chest16": write_dicom(d / "chest16.dcm", u16, photometric="MONOCHROME1", bits=16, WindowCenter=32768,
                               WindowWidth=65536, **_study()),
        "chest_b": write_dicom(d / "chest_b.dcm", b, **_study()),
        "skull": write_dicom(d / "skull.dcm", b, BodyPartExamined="SKULL", **_study()),
        "lateral": write_dicom(d / "lateral.dcm", b, ViewPosition="LL", **_study()),
        "ct": write_dicom(d / "ct.dcm", b, SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT", **_study()),
        "after_crash": write_dicom(d / "after.dcm", a, **_study()),
    }


class Node:
    def __init__(self, bundle: Path, spool: Path, port: int):
        self.bundle, self.spool, self.port = bundle, spool, port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgecxr", "serve", str(self.bundle), "--ae-title", "EDGECXR", "--dicom-port",
             str(self.port), "--spool", str(self.spool), "--allow-ae", CALLING, "--allow-unsigned"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 120:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited: {self.proc.stderr.read()}")
            if echo(self.port).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError("serve did not answer C-ECHO within 120 s")

    def lines(self) -> list[dict]:
        f = self.spool / "results.jsonl"
        return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []

    def wait_lines(self, n: int, timeout: float = 120) -> list[dict]:
        t0 = time.time()
        while time.time() - t0 < timeout:
            got = self.lines()
            if len(got) >= n:
                return got
            time.sleep(0.3)
        raise AssertionError(f"{len(self.lines())} result lines, waited for {n}: {self.lines()}")


def echo(port: int, aet: str = CALLING) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", "EDGECXR", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def store(port: int, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-aet", CALLING, "-aec", "EDGECXR", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def uid(f: Path) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)


def test_dicom_node_reads_reports_refuses_and_survives_kill_9(bundles, films, tmp_path):
    _need_tools()
    node = Node(bundles["jetson-int8"], tmp_path / "spool", _free_port())
    node.start()
    try:
        # an unknown calling AE is rejected at association
        assert echo(node.port, "STRANGER").returncode != 0
        # a CT is refused at negotiation: nothing reaches the spool
        p = store(node.port, films["ct"])
        assert p.returncode != 0 or "refused" in (p.stdout + p.stderr).lower() or "no presentation" in \
            (p.stdout + p.stderr).lower(), p.stdout + p.stderr
        # chest films are read; a skull and a lateral view are stored, then refused with their reason
        p = store(node.port, films["chest8"], films["chest16"], films["skull"], films["lateral"], films["chest_b"])
        assert p.returncode == 0, p.stdout + p.stderr
        got = node.wait_lines(5)
        by_uid = {r["sop_instance_uid"]: r for r in got}
        assert uid(films["ct"]) not in by_uid
        for k in ("chest8", "chest16", "chest_b"):
            r = by_uid[uid(films[k])]
            assert r["status"] == "read" and r["call"] in ("NORMAL", "PNEUMONIA") and 0 <= r["prob"] <= 1, r
        assert by_uid[uid(films["skull"])]["status"] == "refused" and "CHEST" in by_uid[uid(films["skull"])]["reason"]
        assert by_uid[uid(films["lateral"])]["status"] == "refused"
        assert "lateral" in by_uid[uid(films["lateral"])]["reason"].lower()
        assert "Test^Patient" not in (node.spool / "results.jsonl").read_text()  # UIDs only
        # one TID 1500 SR per read film, in the source study, and dciodvfy finds no error in any
        srs = sorted((node.spool / "sr").glob("*.dcm"))
        assert len(srs) == 3, srs
        for f in srs:
            ds = pydicom.dcmread(f)
            src = pydicom.dcmread(next(films[k] for k in ("chest8", "chest16", "chest_b")
                                       if uid(films[k]) == ds.CurrentRequestedProcedureEvidenceSequence[0]
                                       .ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
            assert ds.PatientID == src.PatientID and ds.AccessionNumber == src.AccessionNumber
            assert ds.VerificationFlag == "UNVERIFIED"
            v = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
            errors = [ln for ln in (v.stdout + v.stderr).splitlines() if ln.startswith("Error")]
            assert not errors, (f, errors)
        # a re-sent instance gets no second SR, and says so
        assert store(node.port, films["chest8"]).returncode == 0
        dup = node.wait_lines(6)[-1]
        assert dup["status"] == "duplicate" and dup["sop_instance_uid"] == uid(films["chest8"])
        assert len(list((node.spool / "sr").glob("*.dcm"))) == 3
        # kill -9, restart on the same spool, send one more: every acknowledged film has exactly one SR
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(30)
        node.start()
        assert store(node.port, films["after_crash"]).returncode == 0
        got = node.wait_lines(7)
        read = [r["sop_instance_uid"] for r in got if r["status"] == "read"]
        assert sorted(read) == sorted({uid(films[k]) for k in ("chest8", "chest16", "chest_b", "after_crash")})
        assert len(list((node.spool / "sr").glob("*.dcm"))) == 4
        # SIGTERM: a clean stop
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(60) == 0, node.proc.stderr.read()
    finally:
        if node.proc and node.proc.poll() is None:
            node.proc.kill()


def test_serve_refuses_an_unsigned_bundle_without_the_flag(bundles, tmp_path):
    p = subprocess.run([sys.executable, "-m", "edgecxr", "serve", str(bundles["jetson-int8"]), "--dicom-port",
                        str(_free_port()), "--spool", str(tmp_path / "s")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "nokeys")})
    assert p.returncode != 0 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("edgecxr: error:")]
    assert len(lines) == 1 and ("sign" in lines[0] or "trusted" in lines[0]), p.stderr
