"""What the tests of `edgecxr serve` share: the node as a subprocess, dcmtk's echoscu and storescu,
validation X-rays as DX files, and Orthanc started on loopback ports as the clinic's PACS.

Orthanc gets its own configuration in a folder of the test: DICOM and HTTP ports picked free, its
storage there, the node as a DICOM modality, and a Lua ``OnStoredInstance`` rule that forwards every
image to the node, but not an SR, and nothing the node itself sent. Its REST API (urllib, loopback)
is how a test sees what the PACS holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import MINI

CALLING = "TESTSCU"
NODE_AET = "EDGECXR"
PACS_AET = "ORTHANC"


def need_tools(*tools: str) -> None:
    """Skip when a DICOM tool is missing, unless CI=true (then fail): `make serve-deps` installs them."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing DICOM tools {missing}: `make serve-deps` installs them")
        pytest.skip(f"missing DICOM tools {missing} (make serve-deps)")


def which(tool: str) -> str | None:
    """The real tool: dcmtk's, not the echoscu/storescu/findscu scripts that pynetdicom installs into the
    venv's bin (first on PATH in an activated venv); Orthanc also where Debian puts a daemon (/usr/sbin)."""
    venv_bin = Path(sys.prefix).resolve() / "bin"
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != venv_bin]
    return shutil.which(tool, path=os.pathsep.join(dirs + ["/usr/bin", "/usr/local/bin", "/usr/sbin"]))


def tool(name: str) -> str:
    exe = which(name)
    assert exe, f"{name} is not installed (make serve-deps)"
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def study(**extra) -> dict:
    return {"PatientName": "Test^Patient", "PatientID": "P0001", "PatientBirthDate": "20150101", "PatientSex": "F",
            "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "AccessionNumber": "A1",
            "StudyDate": "20261203", "StudyTime": "081500", "StudyID": "1", "ReferringPhysicianName": "",
            "SeriesNumber": 1, "InstanceNumber": 1, **extra}


def xray(name: str, i: int = 0) -> np.ndarray:
    """The i-th validation X-ray of a class (NORMAL or PNEUMONIA), greyscale, 224 x 224."""
    from PIL import Image

    files = sorted((MINI / name).iterdir())
    with Image.open(files[i % len(files)]) as im:
        return np.asarray(im.convert("L"))


def uid(f: Path) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)


def study_uid(f: Path) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)


def echo(port: int, aet: str = CALLING, called: str = NODE_AET) -> subprocess.CompletedProcess:
    return subprocess.run([tool("echoscu"), "-aet", aet, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def store(port: int, *files: Path, called: str = NODE_AET, aet: str = CALLING) -> subprocess.CompletedProcess:
    return subprocess.run([tool("storescu"), "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def wait_for(what: str, fn, timeout: float, every: float = 0.25):
    """Poll ``fn`` until it returns something true; that value, or AssertionError naming ``what``."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:g} s")


class Node:
    """`edgecxr serve` as a subprocess on a loopback port; its stderr goes to SPOOL.log (appended across restarts)."""

    def __init__(self, bundle: Path, spool: Path, port: int, *args: str, allow: tuple[str, ...] = (CALLING,)):
        self.bundle, self.spool, self.port, self.args, self.allow = bundle, spool, port, list(args), allow
        self.log_path = spool.parent / f"{spool.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "edgecxr", "serve", str(self.bundle), "--ae-title", NODE_AET, "--dicom-port",
               str(self.port), "--spool", str(self.spool), "--allow-unsigned", *self.args]
        for a in self.allow:
            cmd += ["--allow-ae", a]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        t0 = time.time()
        while time.time() - t0 < 120:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log()}")
            if echo(self.port, self.allow[0]).returncode == 0:
                return
            time.sleep(0.5)
        raise AssertionError(f"serve did not answer C-ECHO within 120 s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        raise AssertionError(f"{len(self.lines())} result lines, waited for {n}: {self.lines()}\n{self.log()}")

    def outbox(self) -> list[Path]:
        return sorted((self.spool / "outbox").glob("*.dcm"))

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait: the exit status (a node still running after ``timeout`` is killed)."""
        if not self.alive():
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise AssertionError(f"serve did not stop within {timeout:g} s of SIGTERM: {self.log()}") from None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(30)


# Orthanc's rule for what it receives: an image goes on to the node; an SR (the node's report, or any
# other) stays, and so does anything the node itself sent. ``origin`` names the sending AE for DICOM.
LUA_FORWARD = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  local from = origin and origin['RemoteAet'] or ''
  if tags['Modality'] ~= 'SR' and from ~= '%(node_aet)s' then
    SendToModality(instanceId, 'edgecxr')
  end
end
"""


class Orthanc:
    """Orthanc on loopback ports with its own configuration and storage under ``root``."""

    def __init__(self, root: Path, node_port: int, node_aet: str = NODE_AET):
        self.root = root
        self.dicom_port, self.http_port = free_port(), free_port()
        self.storage = root / "storage"
        root.mkdir(parents=True, exist_ok=True)
        self.lua = root / "forward.lua"
        self.lua.write_text(LUA_FORWARD % {"node_aet": node_aet})
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "edgecxr-test-pacs",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "DicomAet": PACS_AET,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowFind": True,  # findscu from the test's AE title
            "DicomModalities": {"edgecxr": [node_aet, "127.0.0.1", node_port]},
            "LuaScripts": [str(self.lua)],
            "DicomAssociationCloseDelay": 0,
            "SaveJobs": False,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "DicomScuTimeout": 30,
            "HttpServerEnabled": True,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
        }, indent=2))
        self.log_path = root / "orthanc.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        exe = tool("Orthanc")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([exe, "--no-jobs", str(self.config)], stdout=log, stderr=log)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                self.get("/system")
                if echo(self.dicom_port, CALLING, PACS_AET).returncode == 0:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"Orthanc did not answer within {timeout:g} s: {self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def find_series(self, study_instance_uid: str) -> list[str]:
        """dcmtk's findscu, C-FIND at SERIES level in one study: the Modality of each series Orthanc answers."""
        p = subprocess.run([tool("findscu"), "-S", "-aet", CALLING, "-aec", PACS_AET, "127.0.0.1", str(self.dicom_port),
                            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_instance_uid}",
                            "-k", "Modality", "-k", "SeriesInstanceUID"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        return sorted(m.group(1).strip() for m in re.finditer(r"\(0008,0060\) CS \[([^\]]*)\]", p.stdout + p.stderr))

    # ------------------------------------------------------------ REST
    def _call(self, path: str, body: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"} if body is not None else {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def get(self, path: str):
        return self._call(path)

    def find(self, level: str, **query: str) -> list[dict]:
        """/tools/find, expanded: each matching resource's JSON."""
        return self._call("/tools/find", {"Level": level, "Query": query, "Expand": True})

    def study(self, study_instance_uid: str) -> dict | None:
        got = self.find("Study", StudyInstanceUID=study_instance_uid)
        return got[0] if got else None

    def series_of(self, study_id: str) -> list[dict]:
        return self.get(f"/studies/{study_id}/series")

    def instances_of(self, study_id: str) -> list[dict]:
        return self.get(f"/studies/{study_id}/instances")

    def tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def srs(self, study_instance_uid: str) -> list[dict]:
        """The SR instances in this study, as Orthanc's simplified tags."""
        st = self.study(study_instance_uid)
        if st is None:
            return []
        out = []
        for s in self.series_of(st["ID"]):
            if s["MainDicomTags"].get("Modality") == "SR":
                out += [self.tags(i) for i in s["Instances"]]
        return out
