"""The results store (edgecxr.shared.fsutil.atomic_append_line): concurrent writers lose nothing, no reader
sees a half-written line, and a tail torn by a writer that died mid-write is dropped."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

from edgecxr.shared.fsutil import atomic_append_line, read_lines

N_PROC, N_EACH = 4, 200


def _writer(path: str, who: int, n: int, start) -> None:
    start.wait()
    for i in range(n):
        # records of different sizes, some larger than a page, like real bench records with probabilities
        pad = "x" * ((i * 37 + who * 101) % 6000)
        atomic_append_line(path, json.dumps({"w": who, "i": i, "pad": pad}, separators=(",", ":")))


def _reader(path: str, stop, bad) -> None:
    while not stop.is_set():
        if os.path.exists(path):
            for ln in read_lines(path):
                try:
                    json.loads(ln)
                except ValueError:
                    bad.value += 1


def test_four_processes_times_200_appends_keep_all_800_whole_records(tmp_path: Path) -> None:
    path = str(tmp_path / "results" / "dev.jsonl")
    ctx = mp.get_context("spawn")
    start, stop = ctx.Event(), ctx.Event()
    bad = ctx.Value("i", 0)
    procs = [ctx.Process(target=_writer, args=(path, w, N_EACH, start)) for w in range(N_PROC)]
    reader = ctx.Process(target=_reader, args=(path, stop, bad))
    for p in procs + [reader]:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stop.set()
    reader.join(30)
    data = Path(path).read_bytes()
    assert data.endswith(b"\n")
    lines = data.decode().splitlines()
    assert len(lines) == N_PROC * N_EACH
    recs = [json.loads(ln) for ln in lines]  # every line whole
    assert sorted((r["w"], r["i"]) for r in recs) == [(w, i) for w in range(N_PROC) for i in range(N_EACH)]
    for w in range(N_PROC):  # each writer's records in its own order
        assert [r["i"] for r in recs if r["w"] == w] == list(range(N_EACH))
    assert bad.value == 0, "a reader saw a half-written line"


def test_a_torn_tail_is_invisible_and_dropped_by_the_next_append(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    atomic_append_line(p, '{"a": 1}')
    with open(p, "ab") as f:  # a writer killed mid-write
        f.write(b'{"b": 2, "probs": [0.1, 0.')
    assert read_lines(p) == ['{"a": 1}']
    atomic_append_line(p, '{"c": 3}')
    assert p.read_text() == '{"a": 1}\n{"c": 3}\n'


def test_a_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"a": 1}\n{"edited": true}')
    atomic_append_line(p, '{"c": 3}')
    assert read_lines(p) == ['{"a": 1}', '{"edited": true}', '{"c": 3}']
    atomic_append_line(tmp_path / "new" / "r.jsonl", "{}")
    assert (tmp_path / "new" / "r.jsonl").read_text() == "{}\n"
