"""`edgecxr serve` as a clinic meets it: started on a loopback port, driven by dcmtk's echoscu and
storescu (clients nobody here wrote), real X-rays wrapped as DX files, every SR checked by dicom3tools'
dciodvfy, and `kill -9` in the middle: each acknowledged instance has exactly one SR."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pydicom

from tests.serve.harness import Node, echo, free_port, need_tools, store, tool, uid

TOOLS = ("storescu", "echoscu", "dciodvfy")


def test_dicom_node_reads_reports_refuses_and_survives_kill_9(bundles, films, tmp_path):
    need_tools(*TOOLS)
    node = Node(bundles["jetson-int8"], tmp_path / "spool", free_port())
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
            v = subprocess.run([tool("dciodvfy"), str(f)], capture_output=True, text=True, timeout=60)
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
        assert node.proc.wait(60) == 0, node.log()
    finally:
        if node.proc and node.proc.poll() is None:
            node.proc.kill()


def test_serve_refuses_an_unsigned_bundle_without_the_flag(bundles, tmp_path):
    p = subprocess.run([sys.executable, "-m", "edgecxr", "serve", str(bundles["jetson-int8"]), "--dicom-port",
                        str(free_port()), "--spool", str(tmp_path / "s")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "nokeys")})
    assert p.returncode != 0 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("edgecxr: error:")]
    assert len(lines) == 1 and ("sign" in lines[0] or "trusted" in lines[0]), p.stderr
