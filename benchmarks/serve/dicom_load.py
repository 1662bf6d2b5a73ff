"""DICOM load on `edgecxr serve`: 4 parallel dcmtk storescu send 200 X-rays, the node's SRs go to Orthanc.

    PYTHONPATH=. .venv/bin/python benchmarks/serve/dicom_load.py BUNDLE [--instances 200] [--senders 4]
        [--idle 10] [--via-pacs | --kill-after N] [--out JSON]

The set-up is the one of tests/serve/test_orthanc.py (its harness): Orthanc on loopback ports with its
own configuration as the PACS, and the node with ``--pacs ORTHANC@...``. Each instance is a validation
X-ray of tests/data/kermany_mini wrapped as an 8-bit DX file, each in its own study, so its SR is found
by study. First ``--idle`` instances go one at a time, each waiting for its SR in Orthanc (no queue);
then the load: ``--senders`` storescu processes start together, each with ``instances / senders`` files in
one association: straight to the node (default: the X-ray room sends to the board), or, with
``--via-pacs``, to Orthanc, whose Lua rule forwards each image to the node. With ``--kill-after N``
the node gets ``kill -9`` once the load has N results, is restarted on the same spool, and what
storescu (``-v``) got no success for is sent again; then the SRs per film are counted in Orthanc:
every acknowledged instance must have exactly one.

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
from tests.serve.harness import CALLING, NODE_AET, PACS_AET, Node, Orthanc, free_port, need_tools, study, tool, xray  # noqa: E402,E501


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


def acknowledged(storescu_log: str) -> list[str]:
    """The files a ``storescu -v`` run got a success response for."""
    acked, cur = [], None
    for ln in storescu_log.splitlines():
        if "Sending file:" in ln:
            cur = ln.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (Success)" in ln and cur:
            acked.append(cur)
            cur = None
    return acked


def storescu(dest: int, called: str, files: list[Path]) -> subprocess.Popen:
    return subprocess.Popen([tool("storescu"), "-v", "-aet", CALLING, "-aec", called, "127.0.0.1", str(dest), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def make_films(folder: Path, n: int, first: int) -> list[Path]:
    folder.mkdir(parents=True)
    return [write_dicom(folder / f"{k:04d}.dcm", xray("PNEUMONIA" if k % 2 else "NORMAL", k // 2), **study())
            for k in range(first, first + n)]


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs) if xs else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--idle", type=int, default=10, help="first, this many instances one at a time (no queue)")
    ap.add_argument("--via-pacs", action="store_true", help="storescu sends to Orthanc, which forwards to the node")
    ap.add_argument("--kill-after", type=int, default=0, help="kill -9 the node when the load has this many results, "
                    "restart it, re-send what storescu got no success for; then count the SRs per film")
    ap.add_argument("--pacs-down", type=float, default=0, help="stop Orthanc 1 s into the load for this many "
                    "seconds, then start it again on the same storage: how long the outbox takes to drain")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgecxr-dicom-load"))
    ap.add_argument("--out", type=Path, help="JSON results (default: benchmarks/serve/load-MODE.json)")
    ap.add_argument("--timeout", type=float, default=900)
    a = ap.parse_args()
    if (a.kill_after or a.pacs_down) and a.via_pacs or (a.kill_after and a.pacs_down):
        raise SystemExit("dicom_load: one fault at a time, straight to the node (Orthanc would not re-forward)")
    mode = "kill9" if a.kill_after else "pacs-down" if a.pacs_down else "via-pacs" if a.via_pacs else "direct"
    a.out = a.out or ROOT / "benchmarks" / "serve" / f"load-{mode}.json"
    try:
        need_tools("storescu", "echoscu", "Orthanc")
    except BaseException as e:  # pytest's skip outside pytest
        raise SystemExit(f"dicom_load: {e}") from None

    import shutil

    import pydicom

    if a.work.exists():
        shutil.rmtree(a.work)
    a.work.mkdir(parents=True)
    per = a.instances // a.senders
    n = per * a.senders
    idle_films = make_films(a.work / "films" / "idle", a.idle, 0)
    groups = [make_films(a.work / "films" / f"sender{s}", per, a.idle + s * per) for s in range(a.senders)]
    study_of = {str(f): str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                for f in idle_films + [f for g in groups for f in g]}
    idle_studies = [study_of[str(f)] for f in idle_films]
    load_studies = [study_of[str(f)] for g in groups for f in g]

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
    dest, called = (pacs.dicom_port, PACS_AET) if a.via_pacs else (node.port, NODE_AET)
    fault: dict = {}
    try:
        print(f"idle: {a.idle} instances one at a time", flush=True)
        for f in idle_films:
            p = storescu(dest, called, [f])
            out = p.communicate(timeout=120)[0]
            if p.returncode != 0:
                raise SystemExit("storescu failed: " + out[-2000:])
            st = study_of[str(f)]
            t0 = time.time()
            while not pacs.find("Series", Modality="SR", StudyInstanceUID=st):
                if time.time() - t0 > 120:
                    raise SystemExit(f"no SR in Orthanc for {f.name} after 120 s: {node.log()[-2000:]}")
                time.sleep(0.02)
        n_idle_lines = len(node.lines())
        print(f"load: {a.senders} storescu x {per} instances -> {'Orthanc -> ' if a.via_pacs else ''}node", flush=True)
        t_start = time.time()
        procs = [storescu(dest, called, g) for g in groups]
        if a.kill_after:
            while len(node.lines()) - n_idle_lines < a.kill_after and any(p.poll() is None for p in procs):
                time.sleep(0.01)
            node.kill()
            fault["killed_at_results"] = len(node.lines()) - n_idle_lines
            fault["killed_at_s"] = time.time() - t_start
        if a.pacs_down:
            time.sleep(1.0)
            pacs.stop()
            fault["pacs_stopped_at_s"] = time.time() - t_start
            fault["in_orthanc_when_stopped"] = len(changes.seen)
            time.sleep(a.pacs_down)
            fault["outbox_when_pacs_back"] = len(node.outbox())
            pacs.start()
            t_back = time.time()
            fault["pacs_back_at_s"] = t_back - t_start
        outs = [p.communicate(timeout=a.timeout)[0] for p in procs]
        t_sent = time.time()
        acked = [x for o in outs for x in acknowledged(o)]
        if a.kill_after:
            fault["acknowledged_before_kill"] = len(acked)
            node.start()
            fault["restart_s"] = time.time() - t_start - fault["killed_at_s"]
            left = [f for g in groups for f in g if str(f) not in set(acked)]
            fault["resent"] = len(left)
            if left:  # the modality sends again what it got no success for
                p = storescu(dest, called, left)
                out = p.communicate(timeout=a.timeout)[0]
                if p.returncode != 0:
                    raise SystemExit("storescu (re-send) failed: " + out[-2000:])
                acked += acknowledged(out)
            t_sent = time.time()  # accepted: until the re-send is acknowledged too
        elif any(p.returncode != 0 for p in procs):
            raise SystemExit("storescu failed: " + next(o for p, o in zip(procs, outs, strict=True) if p.returncode)[-2000:])
        # wait for every SR in Orthanc
        t0 = time.time()
        while len(pacs.find("Series", Modality="SR")) < a.idle + n and time.time() - t0 < a.timeout:
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        changes.halt.set()
        changes.join(5)
        stopped = node.stop()
    # what Orthanc holds: SRs per study, and when each instance was first seen
    sr_at, img_at, sr_count = {}, {}, {}
    for iid, seen in changes.seen.items():
        tags = pacs.tags(iid)
        st = tags.get("StudyInstanceUID")
        if tags.get("Modality") == "SR":
            sr_at[st] = min(seen, sr_at.get(st, seen))
            sr_count[st] = sr_count.get(st, 0) + 1
        else:
            img_at[st] = seen
    pacs.stop()
    lines = node.lines()
    read = {r.get("study_instance_uid"): r for r in lines if r.get("status") == "read"}

    def timings(studies: list[str]) -> dict:
        lat, total, pred, sr = [], [], [], []
        for st in studies:
            r = read.get(st)
            if r is None or st not in sr_at or (a.via_pacs and st not in img_at):
                continue
            c_store = img_at[st] if a.via_pacs else \
                datetime.fromisoformat(r["time"].replace("Z", "+00:00")).timestamp() - r["timings_ms"]["waited"] / 1000
            lat.append((sr_at[st] - c_store) * 1000)
            total.append(r["timings_ms"]["total"])
            pred.append(r["timings_ms"]["predict"])
            sr.append(r["timings_ms"]["sr"])
        return {"cstore_to_sr_in_orthanc_ms": summary(lat), "node_total_ms": summary(total),
                "node_predict_ms": summary(pred), "node_sr_ms": summary(sr)}

    t_last_sr = max((sr_at[st] for st in load_studies if st in sr_at), default=float("nan"))
    res = {
        "when": datetime.now().astimezone().isoformat(timespec="seconds"),
        "bundle": a.bundle.name, "bundle_backend": json.loads((a.bundle / "manifest.json").read_text()).get("backend"),
        "path": "storescu -> Orthanc -> node -> Orthanc" if a.via_pacs else "storescu -> node -> Orthanc",
        "cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
        "loadavg_after": os.getloadavg(),
        "bench_inference_ms": bench,
        "idle": {"instances": a.idle, **timings(idle_studies)},
        "load": {"instances": n, "senders": a.senders, "storescu_s": t_sent - t_start,
                 "first_send_to_last_sr_s": t_last_sr - t_start, "accepted_per_s": n / (t_sent - t_start),
                 "end_to_end_per_s": n / (t_last_sr - t_start), **timings(load_studies)},
        "results": {s: sum(1 for r in lines if r.get("status") == s) for s in ("read", "refused", "duplicate")},
        "srs_per_film": {"one": sum(1 for st in study_of.values() if sr_count.get(st) == 1),
                         "none": sum(1 for st in study_of.values() if st not in sr_count),
                         "more": sum(1 for st in study_of.values() if sr_count.get(st, 0) > 1)},
        "node_exit": stopped,
    }
    if a.kill_after:
        acked_studies = {study_of[x] for x in acked}
        fault["acknowledged_total"] = len(acked_studies)
        fault["acknowledged_with_one_sr"] = sum(1 for st in acked_studies if sr_count.get(st) == 1)
        res["fault_kill9"] = fault
    if a.pacs_down:
        fault["down_s"] = a.pacs_down
        fault["outbox_recheck_s"] = 30.0  # the node's default, as a board runs it
        fault["drained_s_after_pacs_back"] = t_last_sr - t_back
        fault["outbox_after_run"] = len(node.outbox())
        res["fault_pacs_down"] = fault
    for k in ("idle", "load"):
        p50 = res[k]["node_total_ms"]["p50"]
        e2e = res[k]["cstore_to_sr_in_orthanc_ms"]["p50"]
        res[k]["ratio_node_total_p50_to_bench_p50"] = p50 / bench["p50_ms"] if p50 else None
        res[k]["ratio_cstore_to_sr_p50_to_bench_p50"] = e2e / bench["p50_ms"] if e2e else None
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
