"""Inputs that are not chest X-rays get one clear line naming the file, not a reading, in predict,
data split and bench --data alike (edgecxr.shared.intake through imageio.load_grey). Hostile files are written
from the real full-resolution X-rays (tests/hostile.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecxr.shared.errors import ImageReadError
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.intake import configure
from tests.conftest import MINI, assert_clean_error, run_cli
from tests.hostile import JPEG, hostile_set, real_u8, write_dicom

ANATOMY = ("dicom_skull", "dicom_ct", "dicom_mr", "dicom_lateral_LL", "dicom_lateral_LAT")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return hostile_set(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(autouse=True)
def _default_policy(monkeypatch):
    for k in ("EDGECXR_MAX_PIXELS", "EDGECXR_MIN_SIDE", "EDGECXR_FORCE_ANATOMY"):
        monkeypatch.delenv(k, raising=False)
    from edgecxr.shared import intake

    monkeypatch.setattr(intake, "_override", {})


def test_every_hostile_file_is_one_clear_refusal(hostile):
    assert len(hostile) >= 25
    for name, (path, expect) in hostile.items():
        if expect == "ok":
            g = load_grey(path)
            assert g.ndim == 2 and min(g.shape) >= 64, name
            continue
        with pytest.raises(ImageReadError) as e:
            load_grey(path)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg, (name, msg)
        assert expect.lower() in msg.lower(), (name, msg)


def test_the_png_bomb_is_refused_from_its_header_before_decoding(hostile):
    """In a fresh process: the refusal is ImageReadError and the process never holds the 900 MB of pixels."""
    import subprocess
    import sys

    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the (large) pytest parent
    code = ("import sys, time\n"
            "from edgecxr.shared.imageio import load_grey\n"
            "t0 = time.perf_counter()\n"
            "try:\n    load_grey(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, str(e))\n"
            "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
            "print(time.perf_counter() - t0, hwm)\n")
    p = subprocess.run([sys.executable, "-c", code, str(hostile["png_bomb_30000"][0])], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    err, stats = p.stdout.strip().splitlines()
    assert err.startswith("ImageReadError") and "30000 x 30000" in err, err
    secs, rss_kb = stats.split()
    assert float(secs) < 5.0 and int(rss_kb) < 400_000, stats  # decoding would need 900 MB


def test_forcing_reads_other_anatomy_but_not_bombs_or_frames(hostile):
    configure(force_anatomy=True)
    for name in ANATOMY:
        assert load_grey(hostile[name][0]).shape == (187, 260)
    for name in ("dicom_3_frames", "png_bomb_30000", "png_8x8"):
        with pytest.raises(ImageReadError):
            load_grey(hostile[name][0])


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    assert load_grey(JPEG).shape == (747, 1040)
    monkeypatch.setenv("EDGECXR_MAX_PIXELS", "500000")
    with pytest.raises(ImageReadError, match="1040 x 747 = 1 megapixels, over the limit of 0.5"):
        load_grey(JPEG)
    monkeypatch.setenv("EDGECXR_MAX_PIXELS", "1000000000")
    monkeypatch.setenv("EDGECXR_MIN_SIDE", "800")
    with pytest.raises(ImageReadError, match="at least 800"):
        load_grey(JPEG)


def test_predict_reports_each_bad_file_on_one_line_and_reads_the_rest(bundles, hostile, tmp_path):
    files = [p for p, _ in hostile.values()] + [JPEG]
    p = run_cli("predict", bundles["jetson-int8"], *files)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == len(files)
    for (name, (path, expect)), line in zip(hostile.items(), lines, strict=False):
        assert line.startswith(f"{path}: "), line
        if expect == "ok":
            assert "p(pneumonia)=" in line, (name, line)
        else:
            assert ": error: " in line and expect.lower() in line.lower(), (name, line)
    assert "p(pneumonia)=" in lines[-1]
    # --force-anatomy reads the skull film; the bomb stays refused
    p = run_cli("predict", bundles["jetson-int8"], hostile["dicom_skull"][0], hostile["png_bomb_30000"][0],
                "--force-anatomy")
    out = p.stdout.splitlines()
    assert "p(pneumonia)=" in out[0] and "over the limit" in out[1], p.stdout
    # the bomb alone: one line, no traceback (it ended predict with a traceback before)
    p = run_cli("predict", bundles["jetson-int8"], hostile["png_bomb_30000"][0])
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stdout.strip().splitlines()) == 1


def _folder_with_hostiles(tmp_path: Path, hostile) -> Path:
    root = tmp_path / "site"
    shutil.copytree(MINI, root)
    for name, (path, _) in hostile.items():
        if path.is_file():
            shutil.copy(path, root / "NORMAL" / f"{name}{path.suffix}")
    return root


def test_data_split_and_bench_data_skip_and_report_the_same_files(bundles, hostile, tmp_path):
    root = _folder_with_hostiles(tmp_path, hostile)
    bad = {f"NORMAL/{n}{p.suffix}": e for n, (p, e) in hostile.items() if p.is_file() and e != "ok"}
    p = run_cli("data", "split", root, "--out", tmp_path / "split.json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    split = json.loads((tmp_path / "split.json").read_text())
    skipped = {s["path"]: s["reason"] for s in split["skipped"]}
    assert set(skipped) == set(bad)
    for k, e in bad.items():
        assert e.lower() in skipped[k].lower() and f"skipped {k}: " in p.stdout
    p = run_cli("bench", bundles["jetson-int8"], "--data", root, "--iterations", "2", "--warmup", "0",
                "--results", tmp_path / "res")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    rec = json.loads(next((tmp_path / "res").glob("*.jsonl")).read_text().splitlines()[-1])
    got = {s["path"]: s["reason"] for s in rec["data"]["skipped"]}
    assert got == skipped
    # with --force-anatomy the anatomy refusals are read instead
    p = run_cli("data", "split", root, "--out", tmp_path / "split2.json", "--force-anatomy")
    assert p.returncode == 0, p.stderr
    again = {s["path"] for s in json.loads((tmp_path / "split2.json").read_text())["skipped"]}
    assert again == set(bad) - {f"NORMAL/{n}.dcm" for n in ANATOMY}


def test_strict_split_stops_at_the_first_bad_file_with_one_line(hostile, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(MINI, root)
    shutil.copy(hostile["dicom_skull"][0], root / "PNEUMONIA" / "skull.dcm")
    assert_clean_error(run_cli("data", "split", root, "--out", tmp_path / "x.json", "--strict"), "skull.dcm",
                       "not CHEST")
    assert not (tmp_path / "x.json").exists()


def test_a_chest_dicom_without_anatomy_tags_is_read(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", real_u8(), Modality=None, BodyPartExamined=None, ViewPosition=None)
    assert np.array_equal(load_grey(p), load_grey(JPEG))
