"""Orthanc as the clinic's PACS: a modality (dcmtk's storescu) sends X-rays to Orthanc, Orthanc's Lua
rule forwards them to `edgecxr serve`, and the node's SR comes back into Orthanc, into the source
study, seen through Orthanc's REST API and dcmtk's findscu. Then the PACS goes away: a report waits in the node's outbox
on disk and goes out when Orthanc, restarted on the same storage, answers again."""

from __future__ import annotations

import time

from tests.serve.harness import CALLING, PACS_AET, Node, Orthanc, free_port, need_tools, store, study_uid, uid, wait_for

TOOLS = ("storescu", "echoscu", "findscu", "Orthanc")
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _referenced(sr_tags: dict) -> str:
    """The source image an SR names as its evidence (Orthanc's simplified tags)."""
    ev = sr_tags["CurrentRequestedProcedureEvidenceSequence"][0]
    return ev["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"]


def test_orthanc_gets_one_sr_per_film_in_the_source_study_and_the_outbox_drains_after_an_outage(
        bundles, films, tmp_path):
    need_tools(*TOOLS)
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", node_port)
    settings = tmp_path / "serve.toml"  # a short outbox: two quick attempts, then the PACS is tried every second
    settings.write_text("[serve]\noutbox-retries = 2\noutbox-backoff-s = 0.2\noutbox-recheck-s = 1.0\n")
    node = Node(bundles["jetson-int8"], tmp_path / "spool", node_port, "--pacs",
                f"{PACS_AET}@127.0.0.1:{pacs.dicom_port}", "--config", str(settings), allow=(CALLING, PACS_AET))
    pacs.start()
    node.start()
    try:
        # the modality sends to the PACS; the PACS forwards the images; each chest film's SR comes back
        chests, skull = [films["chest8"], films["chest16"]], films["skull"]
        p = store(pacs.dicom_port, *chests, skull, called=PACS_AET)
        assert p.returncode == 0, p.stdout + p.stderr
        for f in chests:
            srs = wait_for(f"an SR in Orthanc for {f.name}", lambda f=f: pacs.srs(study_uid(f)), 90)
            st = pacs.study(study_uid(f))
            series = pacs.series_of(st["ID"])
            assert sorted(s["MainDicomTags"]["Modality"] for s in series) == ["DX", "SR"], series
            images = [i for i in pacs.instances_of(st["ID"]) if i["MainDicomTags"]["SOPInstanceUID"] == uid(f)]
            assert len(images) == 1, pacs.instances_of(st["ID"])
            assert len(srs) == 1, srs
            sr = srs[0]
            assert sr["Modality"] == "SR" and sr["SOPClassUID"] == COMPREHENSIVE_3D_SR, sr
            assert sr["StudyInstanceUID"] == study_uid(f) and sr["PatientID"] == "P0001"
            assert sr["AccessionNumber"] == "A1" and sr["VerificationFlag"] == "UNVERIFIED"
            assert _referenced(sr) == uid(f)
            assert pacs.find_series(study_uid(f)) == ["DX", "SR"]  # and over DICOM, C-FIND
        by_uid = {r["sop_instance_uid"]: r for r in node.wait_lines(3)}
        assert {k: by_uid[uid(f)]["status"] for k, f in (("a", chests[0]), ("b", chests[1]), ("s", skull))} == \
            {"a": "read", "b": "read", "s": "refused"}
        # the skull was forwarded and refused: no SR in its study; and no SR went from the PACS to the node
        time.sleep(1.5)
        assert pacs.srs(study_uid(skull)) == []
        assert len(node.lines()) == 3, node.lines()
        srs_everywhere = pacs.find("Series", Modality="SR")
        assert len(srs_everywhere) == 2, srs_everywhere

        # the PACS goes away: the next report waits in the outbox, on disk, while the PACS is tried again
        pacs.stop()
        late = films["chest_b"]
        p = store(node.port, late)  # the X-ray room sends straight to the node meanwhile
        assert p.returncode == 0, p.stdout + p.stderr
        assert node.wait_lines(4)[-1]["status"] == "read"
        wait_for("the report in the outbox", lambda: len(node.outbox()) == 1, 30)
        wait_for("the node saying the PACS is not reachable", lambda: "not reachable" in node.log(), 30)
        time.sleep(2.5)  # more than two rechecks: still there
        assert len(node.outbox()) == 1 and len(list((node.spool / "sr").glob("*.dcm"))) == 3

        # the PACS is back on the same storage: the outbox drains, the SR is in its study, nothing twice
        pacs.start()
        srs = wait_for(f"the waiting SR in Orthanc for {late.name}", lambda: pacs.srs(study_uid(late)), 30)
        assert len(srs) == 1 and _referenced(srs[0]) == uid(late)
        wait_for("an empty outbox", lambda: not node.outbox(), 30)
        assert "answers again" in node.log()
        for f in chests:
            assert len(pacs.srs(study_uid(f))) == 1
        assert len(pacs.find("Series", Modality="SR")) == 3
        # every forward of the Lua rule reached the node: no SR was sent back to it (it would refuse one)
        assert "Unable to send" not in pacs.log(), [ln for ln in pacs.log().splitlines() if "Unable to send" in ln]
        assert node.stop() == 0, node.log()
    finally:
        node.kill()
        pacs.stop()
