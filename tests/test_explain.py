"""Heatmaps: occlusion through every real bundle runtime (no torch), Grad-CAM on the real reference model,
on real full-resolution X-rays and DICOM written from them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgecxr.device.explain import (
    Occluder,
    OcclusionConfig,
    box_blur,
    evidence,
    n_forwards,
    open_bundle_model,
    run_explain,
    windows,
)
from edgecxr.device.explain_compare import compare_rows, pearson
from edgecxr.device.predict import predict
from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.preprocess import preprocess_grey
from tests.conftest import FULLRES, ROOT, assert_clean_error, run_cli
from tests.test_imageio import write_dicom

PNEU = FULLRES / "person1320_virus_2277.jpeg"  # 1008 x 568
PNEU2 = FULLRES / "person1177_virus_1999.jpeg"  # 763 x 440, colour JPEG of grey content
NORMAL = FULLRES / "IM-0206-0001.jpeg"  # 1040 x 747
COARSE = OcclusionConfig(grid=6, window=2, batch=8)  # 5 x 5 windows: fast, still a map


def central_fraction(heat: np.ndarray, positive: bool, margin: float = 0.2) -> float:
    """Share of the call's evidence inside the central box (``margin`` of each side left out)."""
    e = evidence(heat, positive)
    s = heat.shape[0]
    a = int(round(margin * s))
    return float(e[a:s - a, a:s - a].sum() / max(e.sum(), 1e-12))


def test_windows_cover_every_pixel():
    for size, grid, win in [(224, 14, 2), (64, 6, 2), (64, 14, 2), (224, 7, 3), (100, 3, 2)]:
        w, starts = windows(size, grid, win)
        cover = np.zeros(size, int)
        for s0 in starts:
            cover[s0:s0 + w] += 1
        assert cover.min() >= 1 and starts[-1] + w == size, (size, grid, win)
        assert n_forwards(size, grid, win) == len(starts) ** 2 + 1


@pytest.mark.parametrize("key", ["rpi-int8", "rpi-fp32", "nuc-int8", "nuc-fp32", "jetson-int8", "jetson-fp32"])
def test_heatmap_every_backend(bundles, tmp_path, key):
    """Every runtime and precision: a non-trivial map, the picture at the radiograph's aspect ratio, and the
    probability the batched occlusion run reports is predict's."""
    out = tmp_path / "heat"
    s = run_explain(bundles[key], [PNEU, NORMAL], out, COARSE)
    assert not any(r.get("error") for r in s["rows"])
    ref = {r["file"]: r for r in predict(bundles[key], [PNEU, NORMAL])}
    for r in s["rows"]:
        assert abs(r["prob"] - ref[r["file"]]["prob"]) < 1e-4 and r["label"] == ref[r["file"]]["label"]
        heat = np.load(out / r["heat"])
        assert heat.shape == (64, 64) and np.isfinite(heat).all() and heat.std() > 0
        assert r["forwards"] == 26 and r["seconds"] > 0
        with Image.open(out / r["png"]) as im, Image.open(r["file"]) as orig:
            (w, h), (ow, oh) = im.size, orig.size
        # the radiograph keeps its own aspect ratio (scaled to 640 px at most); a caption band lies below it
        k = min(1.0, 640 / max(ow, oh))
        assert w == round(ow * k) and round(oh * k) < h < round(oh * k) + 150
    page = (out / "index.html").read_text()
    assert all(r["png"] in page for r in s["rows"]) and "<script" not in page


def test_dicom_and_png_of_one_image_give_one_heatmap(bundles, tmp_path):
    u8 = np.asarray(Image.open(PNEU).convert("L"))
    png = tmp_path / "scan.png"
    Image.fromarray(u8).save(png)
    # 12-bit stored values, windowed so that the display range is the PNG's 0..255
    dcm = write_dicom(tmp_path / "scan.dcm", u8.astype(np.uint16) * 16, WindowCenter=2040.5, WindowWidth=4081)
    assert np.abs(load_grey(png) - load_grey(dcm)).max() < 1e-6
    out = tmp_path / "heat"
    s = run_explain(bundles["nuc-int8"], [png, dcm], out, COARSE)
    a, b = (np.load(out / r["heat"]) for r in s["rows"])
    assert {r["png"] for r in s["rows"]} == {"scan_png.png", "scan_dcm.png"}  # same stem, two outputs
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max()) and pearson(a, b) > 0.9999


def test_pneumonia_heat_inside_the_chest_not_on_borders(bundles):
    """Most of the evidence for a pneumonia call lies in the central box, on the board's int8 runtime."""
    m = open_bundle_model(bundles["rpi-int8"])
    occ = Occluder(m.infer, m.pp, OcclusionConfig(grid=8, window=2, batch=8))
    for f in (PNEU, PNEU2):
        hm = occ.explain(preprocess_grey(load_grey(f), m.pp))
        assert hm.score > 0, f  # the tiny model calls both PNEUMONIA
        # the central 60% x 60% box is 36% of the area
        assert central_fraction(hm.heat, True) > 0.5, f


def test_gradcam_reference_model_looks_at_the_lungs(tmp_path):
    """Grad-CAM on the shipped reference model: most evidence for its pneumonia call lies in the centre."""
    from edgecxr.host.explain_host import run_host_explain

    out = tmp_path / "gc"
    s = run_host_explain(ROOT / "models/mnv2-ref.pt", [PNEU, PNEU2, NORMAL], out)
    rows = {r["file"]: r for r in s["rows"]}
    for f in (PNEU, PNEU2):
        r = rows[str(f)]
        assert r["label"] == "PNEUMONIA" and r["method"] == "gradcam"
        heat = np.load(out / r["heat"])
        assert heat.shape == (224, 224) and heat.max() > 0
        assert central_fraction(heat, True) > 0.5, f
    assert rows[str(NORMAL)]["label"] == "NORMAL"


def test_cli_bad_files_reported_and_skipped_earlier_output_kept(bundles, tmp_path):
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"not a jpeg")
    trunc = tmp_path / "trunc.jpeg"
    trunc.write_bytes(NORMAL.read_bytes()[:2000])
    out = tmp_path / "heat"
    p = run_cli("explain", bundles["rpi-int8"], PNEU, bad, trunc, "--out", out, "--grid", "5")
    assert_clean_error(p, str(bad), "2 of 3")
    assert f"{bad}: error:" in p.stdout and f"{trunc}: error:" in p.stdout
    # the one good film is a viral pneumonia case that the shipped int8 model calls right
    assert f"{PNEU}: PNEUMONIA  p(pneumonia)=" in p.stdout, p.stdout
    rec = json.loads((out / "explain.json").read_text())
    assert [r.get("error") is None for r in rec["rows"]] == [True, False, False]
    assert rec["rows"][0]["label"] == "PNEUMONIA" and rec["rows"][0]["prob"] >= rec["rows"][0]["threshold"]
    assert sorted(f.name for f in out.glob("*.png")) == ["person1320_virus_2277_jpeg.png"]
    assert "skipped" in (out / "index.html").read_text()
    # an earlier, non-empty output folder is never overwritten without --force
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    p = run_cli("explain", bundles["rpi-int8"], NORMAL, "--out", out, "--grid", "5")
    assert_clean_error(p, str(out), "--force")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    # predict --explain: predict's lines, and the pictures
    p = run_cli("predict", bundles["jetson-int8"], NORMAL, "--explain", tmp_path / "pe")
    assert p.returncode == 0, p.stderr
    assert "p(pneumonia)=" in p.stdout and "heatmap IM-0206-0001_jpeg.png" in p.stdout
    assert (tmp_path / "pe" / "IM-0206-0001_jpeg.png").is_file()
    # a file that is neither a bundle nor a checkpoint
    p = run_cli("explain", PNEU, NORMAL, "--out", tmp_path / "x")
    assert_clean_error(p, "neither a bundle")


def test_budget_coarsens_the_grid(bundles):
    m = open_bundle_model(bundles["nuc-fp32"])
    x = preprocess_grey(load_grey(PNEU), m.pp)
    occ = Occluder(m.infer, m.pp, OcclusionConfig(grid=14, batch=8, budget_s=1e-4))
    occ.warm_up()
    hm = occ.explain(x)
    assert hm.grid == 3 and hm.forwards == 5
    full = Occluder(m.infer, m.pp, OcclusionConfig(grid=14, batch=8)).explain(x)
    assert full.forwards == 170
    with pytest.raises(EdgeCXRError):
        OcclusionConfig(grid=2, window=2)
    with pytest.raises(EdgeCXRError):
        OcclusionConfig(fill="noise")


def test_blur_fill(bundles):
    """--fill blur hides detail but keeps brightness: another map from the same passes, same clean score."""
    flat = np.full((3, 40, 40), 0.7, np.float32)
    assert np.allclose(box_blur(flat, 6), 0.7)
    m = open_bundle_model(bundles["nuc-fp32"])
    x = preprocess_grey(load_grey(PNEU), m.pp)
    mean = Occluder(m.infer, m.pp, COARSE).explain(x)
    blur = Occluder(m.infer, m.pp, OcclusionConfig(grid=6, window=2, batch=8, fill="blur")).explain(x)
    assert blur.score == pytest.approx(mean.score, abs=1e-5) and blur.forwards == mean.forwards
    assert np.isfinite(blur.heat).all() and blur.heat.std() > 0 and not np.allclose(blur.heat, mean.heat)


def test_compare_int8_fp32_and_flags(bundles, tmp_path):
    out = tmp_path / "cmp"
    s = run_explain(bundles["rpi-int8"], [PNEU, NORMAL], out, COARSE, compare=bundles["rpi-fp32"])
    pairs = s["pairs"]
    assert len(pairs) == 2 and (out / "reference" / "person1320_virus_2277_jpeg.png").is_file()
    for p in pairs:
        a = np.load(out / p["png"].replace(".png", ".heat.npy"))
        b = np.load(out / p["reference_png"].replace(".png", ".heat.npy"))
        assert p["r"] == pytest.approx(pearson(a, b))
        assert -1 <= p["r"] <= 1
    assert (out / "compare.md").read_text().startswith("| n |")
    # a map that points elsewhere is flagged; the same map is not
    rows = [{"file": "a", "png": "a.png", "prob": 0.9, "threshold": 0.5, "label": "P", "seconds": 1.0}]
    h = np.random.default_rng(0).normal(size=(16, 16))
    same = compare_rows(rows, rows, {"a": h}, {"a": h}, 0.5)
    other = compare_rows(rows, rows, {"a": h}, {"a": -h}, 0.5)
    assert not same["pairs"][0]["flag"] and same["pairs"][0]["r"] == pytest.approx(1.0)
    assert other["pairs"][0]["flag"] and other["summary"]["compare"]["n_flagged"] == 1


def test_explain_never_imports_torch(bundles, tmp_path):
    code = f"""
import sys
import edgecxr.cli.main
from edgecxr.device.explain import run_explain, OcclusionConfig
run_explain({str(bundles['nuc-int8'])!r}, [{str(PNEU)!r}], {str(tmp_path / 'h')!r}, OcclusionConfig(grid=4),
            compare={str(bundles['nuc-fp32'])!r})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "pytorch_grad_cam", "cv2", "matplotlib"))
assert not heavy, heavy
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
