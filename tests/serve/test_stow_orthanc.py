"""STOW-RS into the node, the SR out to Orthanc: dicomweb-client (a client nobody here wrote) stores a
film through `POST /dicomweb/studies`; the same worker reads it and the same outbox sends its SR to
Orthanc, into the film's study. The DICOM door is open in the same process."""

from __future__ import annotations

import pydicom
import pytest

from tests.hostile import write_dicom
from tests.serve.harness import CALLING, PACS_AET, Node, Orthanc, free_port, need_tools, study, wait_for, xray


def test_stow_rs_instance_gets_its_sr_in_orthanc(bundles, tmp_path):
    need_tools("echoscu", "Orthanc")
    web = pytest.importorskip("dicomweb_client.api")
    node_port, http_port = free_port(), free_port()
    pacs = Orthanc(tmp_path / "orthanc", node_port)
    node = Node(bundles["jetson-int8"], tmp_path / "spool", node_port, "--pacs",
                f"{PACS_AET}@127.0.0.1:{pacs.dicom_port}", "--http", f"127.0.0.1:{http_port}",
                allow=(CALLING, PACS_AET))
    pacs.start()
    node.start()
    try:
        film = write_dicom(tmp_path / "chest.dcm", xray("PNEUMONIA"), **study())
        ds = pydicom.dcmread(film)
        client = web.DICOMwebClient(url=f"http://127.0.0.1:{http_port}/dicomweb")
        resp = client.store_instances([ds])
        assert [r.ReferencedSOPInstanceUID for r in resp.ReferencedSOPSequence] == [ds.SOPInstanceUID]
        srs = wait_for("the STOW film's SR in Orthanc", lambda: pacs.srs(ds.StudyInstanceUID), 90)
        assert len(srs) == 1 and srs[0]["StudyInstanceUID"] == ds.StudyInstanceUID
        line = next(r for r in node.lines() if r.get("sop_instance_uid") == ds.SOPInstanceUID)
        assert line["door"] == "stow" and line["status"] == "read"
        # the report went out, so the outbox is empty; the HTTP door's metrics say so too
        wait_for("an empty outbox", lambda: not node.outbox(), 30)
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
        assert 'edgecxr_instances_received_total{door="stow"} 1.0' in text and "edgecxr_sr_sent_total 1.0" in text
    finally:
        node.stop()
        pacs.stop()
