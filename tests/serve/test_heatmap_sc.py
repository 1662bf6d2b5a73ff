"""`edgecxr serve --heatmap`: besides the SR, a Secondary Capture of the occlusion heatmap in the source
study, with "NOT FOR DIAGNOSIS" burned into its pixels; dciodvfy finds no error in it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pydicom

from tests.hostile import write_dicom
from tests.serve.harness import CALLING, echo, need_tools, store, tool
from tests.serve.harness import free_port as _free_port
from tests.serve.harness import study as _study
from tests.serve.harness import xray as _xray


def test_heatmap_secondary_capture_in_the_source_study(bundles, tmp_path):
    need_tools("storescu", "echoscu", "dciodvfy")
    port, spool = _free_port(), tmp_path / "spool"
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr", "serve", str(bundles["rpi-int8"]), "--dicom-port",
                             str(port), "--spool", str(spool), "--allow-ae", CALLING, "--allow-unsigned", "--heatmap"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while echo(port).returncode != 0:
            assert proc.poll() is None and time.time() - t0 < 120, proc.stderr.read() if proc.poll() else "no echo"
            time.sleep(0.5)
        film = write_dicom(tmp_path / "chest.dcm", _xray("PNEUMONIA"), **_study())
        assert store(port, film).returncode == 0
        t0 = time.time()
        while not (spool / "results.jsonl").exists() or not (spool / "results.jsonl").read_text().strip():
            assert time.time() - t0 < 120
            time.sleep(0.3)
        rec = json.loads((spool / "results.jsonl").read_text().splitlines()[0])
        assert rec["status"] == "read" and rec["heatmap_instance_uid"], rec
        sc_file = spool / "sr" / f"{rec['heatmap_instance_uid']}.dcm"
        sc, src = pydicom.dcmread(sc_file), pydicom.dcmread(film)
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.StudyInstanceUID == src.StudyInstanceUID
        assert sc.SeriesInstanceUID not in (src.SeriesInstanceUID,) and sc.PatientID == src.PatientID
        assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in sc.ImageComments
        px = sc.pixel_array
        assert px.ndim == 3 and px.shape[2] == 3
        band = px[:10].reshape(-1, 3).astype(int)  # the red banner with white text, on top
        assert (band[:, 0] > 120).mean() > 0.9 and (band[:, 1] < 60).mean() > 0.5
        v = subprocess.run([tool("dciodvfy"), str(sc_file)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (v.stdout + v.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, errors
        assert np.asarray(px).std() > 10  # a picture, not a blank
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
