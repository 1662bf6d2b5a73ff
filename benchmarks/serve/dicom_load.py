"""DICOM load on `edgecxr serve`: 4 parallel dcmtk storescu send 200 X-rays, the node's SRs go to Orthanc.

    PYTHONPATH=. .venv/bin/python benchmarks/serve/dicom_load.py BUNDLE [--instances 200] [--senders 4]
        [--via-pacs] [--out JSON]

The set-up is the one of tests/serve/test_orthanc.py (its harness): Orthanc on loopback ports with its
own configuration as the PACS, and the node with ``--pacs ORTHANC@...``. Each instance is a validation
X-ray of tests/data/kermany_mini wrapped as an 8-bit DX file, each in its own study, so its SR is found
by study. ``--senders`` storescu processes start together, each with ``instances / senders`` files in
one association: straight to the node (default: the X-ray room sends to the board), or, with
``--via-pacs``, to Orthanc, whose Lua rule forwards each image to the node.

What is timed, all on this machine's clock:

* *C-STORE*: when the instance was stored. Straight to the node: the spool file's arrival (the
  results log's ``time`` minus its ``waited``); via the PACS: when Orthanc's ``/changes`` first
  shows the image.
* *SR stored in Orthanc*: when ``/changes`` (polled every 50 ms by a thread of this script) first
  shows the SR; it is matched to its source by study.
* *instances per second*: all instances over the span from the first storescu start to the last SR
  in Orthanc (end to end), and over the storescu span only (accepted).
* the node's own time per instance (``timings_ms`` of the results log: predict, SR, total) and the
  bench's p50 inference time of the same bundle (``edgecxr.device.bench``, batch 1, runtime call
  only): their ratio is what the node adds around the model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile import write_dicom  # noqa: E402
from tests.serve.harness import CALLING, NODE_AET, PACS_AET, Node, Orthanc, free_port, need_tools, study, xray  # noqa: E402,E501


def cpu_flags() -> list[str]:
    p = subprocess.run("grep -o -w -E 'avx2|avx512_vnni|amx_int8' /proc/cpuinfo | sort -u", shell=True,
                       capture_output=True, text=True)
    return p.stdout.split()


def cpu_model() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(np.array(xs), q)) if xs else None


class Changes(threading.Thread):
    """Polls Orthanc's /changes; the first time each new instance was seen (this clock)."""

    def __init__(self, pacs: Orthanc, every: float = 0.05):
        super().__init__(daemon=True)
        self.pacs, self.every = pacs, every
        self.seen: dict[str, float] = {}
        self.since = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                while True:
                    got = self.pacs.get(f"/changes?since={self.since}&limit=1000")
                    now = time.time()
                    for c in got["Changes"]:
                        if c["ChangeType"] == "NewInstance":
                            self.seen.setdefault(c["ID"], now)
                    self.since = got["Last"]
                    if got["Done"]:
                        break
            except OSError:
                pass
            self.halt.wait(self.every)


def bench_p50(bundle: Path) -> dict:
    from edgecxr.device.bench import BenchConfig, run, subject_from_bundle

    rec = run(subject_from_bundle(bundle), None, BenchConfig(warmup=10, iterations=100, time_budget_s=5.0,
                                                             accuracy=False), log=lambda *a, **k: None)
    lat = rec["latency_ms"]
    return {"p50_ms": lat["p50"], "p99_ms": lat["p99"], "n": lat["n"], "threads": rec.get("threads")
            or (rec.get("runtime") or {}).get("threads")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--via-pacs", action="store_true", help="storescu sends to Orthanc, which forwards to the node")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgecxr-dicom-load"))
    ap.add_argument("--out", type=Path, help="JSON results (default: benchmarks/serve/load-direct.json, load-via-pacs.json)")
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    a.out = a.out or ROOT / "benchmarks" / "serve" / f"load-{'via-pacs' if a.via_pacs else 'direct'}.json"
    need = ("storescu", "echoscu", "Orthanc")
    try:
        need_tools(*need)
    except BaseException as e:  # pytest's skip outside pytest
        raise SystemExit(f"dicom_load: {e} (make serve-deps)") from None

    import shutil

    if a.work.exists():
        shutil.rmtree(a.work)
    a.work.mkdir(parents=True)
    films = a.work / "films"
    per = a.instances // a.senders
    n = per * a.senders
    groups: list[list[Path]] = []
    k = 0
    for s in range(a.senders):
        d = films / f"sender{s}"
        d.mkdir(parents=True)
        g = []
        for _ in range(per):
            g.append(write_dicom(d / f"{k:04d}.dcm", xray("PNEUMONIA" if k % 2 else "NORMAL", k // 2), **study()))
            k += 1
        groups.append(g)
    studies = {}
    import pydicom

    for g in groups:
        for f in g:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            studies[str(ds.StudyInstanceUID)] = str(ds.SOPInstanceUID)

    print(f"bench: p50 inference of {a.bundle.name} ...", flush=True)
    bench = bench_p50(a.bundle)

    node_port = free_port()
    pacs = Orthanc(a.work / "orthanc", node_port)
    node = Node(a.bundle, a.work / "spool", node_port, "--pacs", f"{PACS_AET}@127.0.0.1:{pacs.dicom_port}",
                allow=(CALLING, PACS_AET))
    pacs.start()
    node.start()
    changes = Changes(pacs)
    changes.start()
    try:
        dest, called = (pacs.dicom_port, PACS_AET) if a.via_pacs else (node.port, NODE_AET)
        print(f"load: {a.senders} storescu x {per} instances -> {'Orthanc -> ' if a.via_pacs else ''}node", flush=True)
        t_start = time.time()
        procs = [subprocess.Popen(["storescu", "-aet", CALLING, "-aec", called, "127.0.0.1", str(dest), *map(str, g)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for g in groups]
        outs = [p.communicate(timeout=a.timeout)[0] for p in procs]
        t_sent = time.time()
        failed = [o for p, o in zip(procs, outs, strict=True) if p.returncode != 0]
        if failed:
            raise SystemExit("storescu failed: " + failed[0][-2000:])
        # wait for every SR in Orthanc (the source's study holds an SR)
        t0 = time.time()
        while True:
            srs = pacs.find("Series", Modality="SR")
            if len(srs) >= n or time.time() - t0 > a.timeout:
                break
            time.sleep(0.5)
        time.sleep(0.3)
        t_end_poll = time.time()
    finally:
        changes.halt.set()
        changes.join(5)
        stopped = node.stop()
    # resolve the instances Orthanc saw: modality and study
    sr_at, img_at = {}, {}
    for iid, seen in changes.seen.items():
        tags = pacs.tags(iid)
        st = tags.get("StudyInstanceUID")
        if tags.get("Modality") == "SR":
            sr_at[st] = seen
        else:
            img_at[st] = seen
    pacs.stop()
    lines = node.lines()
    by_study = {r.get("study_instance_uid"): r for r in lines}
    lat_ms, totals, predicts, srs_ms = [], [], [], []
    for st in studies:
        r = by_study.get(st)
        if r is None or st not in sr_at:
            continue
        if a.via_pacs:
            if st not in img_at:
                continue
            c_store = img_at[st]
        else:
            c_store = datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() - r["timings_ms"]["waited"] / 1000
        lat_ms.append((sr_at[st] - c_store) * 1000)
        totals.append(r["timings_ms"]["total"])
        predicts.append(r["timings_ms"].get("predict", 0.0))
        srs_ms.append(r["timings_ms"].get("sr", 0.0))
    t_last_sr = max(sr_at.values()) if sr_at else t_end_poll
    res = {
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "bundle": a.bundle.name, "instances": n, "senders": a.senders,
        "path": "storescu -> Orthanc -> node -> Orthanc" if a.via_pacs else "storescu -> node -> Orthanc",
        "cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
        "read": sum(1 for r in lines if r.get("status") == "read"),
        "refused": sum(1 for r in lines if r.get("status") == "refused"),
        "srs_in_orthanc": len(sr_at), "matched": len(lat_ms), "node_exit": stopped,
        "accepted_per_s": n / (t_sent - t_start), "end_to_end_per_s": n / (t_last_sr - t_start),
        "storescu_s": t_sent - t_start, "first_send_to_last_sr_s": t_last_sr - t_start,
        "cstore_to_sr_ms": {"p50": pct(lat_ms, 50), "p99": pct(lat_ms, 99), "max": max(lat_ms) if lat_ms else None},
        "node_ms": {"total_p50": pct(totals, 50), "total_p99": pct(totals, 99), "predict_p50": pct(predicts, 50),
                    "sr_p50": pct(srs_ms, 50)},
        "bench": bench,
    }
    res["ratio_node_total_p50_to_bench_p50"] = res["node_ms"]["total_p50"] / bench["p50_ms"] if totals else None
    res["ratio_cstore_to_sr_p50_to_bench_p50"] = res["cstore_to_sr_ms"]["p50"] / bench["p50_ms"] if lat_ms else None
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
