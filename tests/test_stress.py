"""The shift stress set (edgecxr.shared.stress, `edgecxr data stress`) on real X-rays."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgecxr.shared.data import make_split, scan
from edgecxr.shared.errors import DataError, EdgeCXRError
from edgecxr.shared.fsutil import sha256_file
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.stress import (
    CORRUPTIONS,
    PARAMS,
    RECIPE_VERSION,
    image_rng,
    load_stress_manifest,
    make_stress_set,
    recipe,
    select,
    stress_arrays,
)

from .conftest import MINI, NPZ, assert_clean_error, run_cli

# corruptions whose output depends on the seed (a direction, an angle, a filter or the noise)
RANDOM = {"exposure", "contrast", "gamma", "noise", "crop_pad", "rotation", "resample"}


@pytest.fixture(scope="module")
def images() -> list[tuple[np.ndarray, str]]:
    out = []
    for cls in ("PNEUMONIA", "NORMAL"):
        for p in sorted((MINI / cls).iterdir())[:3]:
            out.append((load_grey(p), sha256_file(p)))
    return out


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def test_every_corruption_keeps_shape_and_range_and_changes_the_image(images):
    wide = images[0][0][10:210, 20:180]  # not square: geometric ones must keep H and W
    for name, fn in CORRUPTIONS.items():
        for s in (1, 2, 3):
            for grey, sha in [*images, (wide, "wide")]:
                out = fn(grey, s, image_rng(0, sha, name, s))
                assert out.shape == grey.shape, (name, s)
                assert out.dtype == np.float32, (name, s, out.dtype)
                assert np.isfinite(out).all()
                assert out.min() >= 0.0 and out.max() <= 1.0, (name, s)
                assert mad(out, grey) > 0.002, (name, s)


def test_corrupt_wrapper_contract(images):
    from edgecxr.shared.stress import corrupt

    grey, sha = images[0]
    for name in CORRUPTIONS:
        out = corrupt(grey.astype(np.float64), name, 3, image_rng(0, sha, name, 3))
        assert out.dtype == np.float32 and out.shape == grey.shape
        assert 0.0 <= out.min() and out.max() <= 1.0
    with pytest.raises(EdgeCXRError, match="known: exposure"):
        corrupt(grey, "fog", 1, image_rng(0, sha, "fog", 1))
    with pytest.raises(EdgeCXRError, match="1, 2, 3"):
        corrupt(grey, "blur", 4, image_rng(0, sha, "blur", 4))


def test_strength_is_monotone_in_severity(images):
    # the same generator at each severity: both directions are covered by the four seeds
    for name in CORRUPTIONS:
        for grey, _ in images:
            for k in range(4):
                outs = [CORRUPTIONS[name](grey, s, np.random.default_rng(k)) for s in (1, 2, 3)]
                d = [mad(o, grey) for o in outs]
                assert d[0] < d[1] < d[2], (name, k, d)
                if name in ("rotation", "crop_pad"):  # geometric: more of the frame is black border
                    black = [float((o == 0).mean()) for o in outs]
                    assert black[0] < black[1] < black[2], (name, k, black)
    for name, spec in PARAMS.items():  # and the recorded parameters move one way
        for key, vals in spec.items():
            if key == "what" or len(set(vals)) == 1:
                continue
            diffs = np.diff(vals)
            assert (diffs > 0).all() or (diffs < 0).all(), (name, key, vals)


def test_image_rng_is_per_image_and_order_independent(images):
    (a, sha_a), (b, sha_b) = images[0], images[1]
    r1 = image_rng(0, sha_a, "noise", 2).random(4)
    image_rng(0, sha_b, "noise", 2).random(100)  # drawing for another image changes nothing
    assert np.array_equal(r1, image_rng(0, sha_a, "noise", 2).random(4))
    for other in [(1, sha_a, "noise", 2), (0, sha_b, "noise", 2), (0, sha_a, "blur", 2), (0, sha_a, "noise", 3)]:
        assert not np.array_equal(r1, image_rng(*other).random(4)), other
    fwd = {(c, s, [sha_a, sha_b][i]): g for c, s, i, g in stress_arrays([a, b], [sha_a, sha_b], seed=5)}
    rev = {(c, s, [sha_b, sha_a][i]): g for c, s, i, g in stress_arrays([b, a], [sha_b, sha_a], seed=5)}
    alone = {(c, s, sha_a): g for c, s, _, g in stress_arrays([a], [sha_a], seed=5)}
    assert len(fwd) == len(CORRUPTIONS) * 3 * 2
    for k, g in fwd.items():
        assert np.array_equal(g, rev[k]), k
        if k in alone:
            assert np.array_equal(g, alone[k]), k


def test_stress_arrays_order_and_choice(images):
    greys, shas = [g for g, _ in images[:2]], [s for _, s in images[:2]]
    got = [(c, s, i) for c, s, i, _ in stress_arrays(greys, shas, severities=(3, 1), corruptions=["jpeg", "zoom"])]
    assert got == [("jpeg", 3, 0), ("jpeg", 3, 1), ("jpeg", 1, 0), ("jpeg", 1, 1),
                   ("zoom", 3, 0), ("zoom", 3, 1), ("zoom", 1, 0), ("zoom", 1, 1)]
    with pytest.raises(EdgeCXRError, match="severity 0"):
        list(stress_arrays(greys, shas, severities=(0,)))
    with pytest.raises(EdgeCXRError, match="2 images but 1"):
        list(stress_arrays(greys, shas[:1]))


def test_recipe_records_the_parameters():
    r = recipe(7, (1, 3), ["rotation", "noise"])
    assert r["version"] == RECIPE_VERSION == 1 and r["seed"] == 7 and r["severities"] == [1, 3]
    assert list(r["corruptions"]) == ["rotation", "noise"]
    assert r["corruptions"]["rotation"]["severities"] == {"1": {"degrees": 5.0}, "3": {"degrees": 15.0}}
    assert r["corruptions"]["noise"]["severities"]["3"]["photons"] == PARAMS["noise"]["photons"][2]
    full = recipe(0, (1, 2, 3), None)
    assert set(full["corruptions"]) == set(CORRUPTIONS) >= {"exposure", "contrast", "gamma", "noise", "blur", "jpeg",
                                                               "zoom", "crop_pad", "rotation", "resample"}
    json.dumps(full)  # plain JSON
    with pytest.raises(EdgeCXRError, match="unknown corruption 'fog'.*crop_pad"):
        recipe(0, (1,), ["fog"])


def test_select_is_stratified_and_seeded():
    items = scan(MINI).items
    a, b, c = select(items, 8, 0), select(items, 8, 0), select(items, 8, 1)
    assert [i.path for i in a] == [i.path for i in b] != [i.path for i in c]
    assert sorted(i.label for i in a) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [i.path for i in a] == sorted(i.path for i in a)
    assert len(select(items, 0, 0)) == len(items) == len(select(items, 1000, 0))
    with pytest.raises(DataError, match="at least 2"):
        select(items, 1, 0)


@pytest.fixture(scope="module")
def stress_sets(tmp_path_factory):
    """8 images of MINI stressed twice with seed 0 (through the CLI), and the same 8 images with seed 1."""
    base = tmp_path_factory.mktemp("stress")
    runs = {}
    for key in ("a", "b"):
        out = base / key
        p = run_cli("data", "stress", MINI, "--out", out, "--max-images", "8", "--seed", "0", timeout=120)
        assert p.returncode == 0, p.stdout + p.stderr
        runs[key] = (out, p)
    # seed 1 would choose another subset of MINI: give it the images seed 0 chose
    chosen = base / "chosen"
    for path in {it["source_path"] for it in load_stress_manifest(base / "a")["items"]}:
        (chosen / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MINI / path, chosen / path)
    p = run_cli("data", "stress", chosen, "--out", base / "c", "--seed", "1", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    runs["c"] = (base / "c", p)
    return runs


def test_cli_makes_the_layout_and_manifest(stress_sets):
    out, p = stress_sets["a"]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == len(CORRUPTIONS) * 3 + 1
    assert lines[0].startswith("exposure-s1") and "8 images" in lines[0] and "shift" in lines[0]
    assert "240 images" in lines[-1] and "30 groups" in lines[-1]
    m = json.loads((out / "manifest.json").read_text())
    assert m == load_stress_manifest(out) == load_stress_manifest(out / "manifest.json", verify=True)
    assert m["kind"] == "edgecxr-stress" and m["schema"] == 1
    assert m["recipe"] == recipe(0, (1, 2, 3), None)
    assert m["source"] == str(MINI) and m["source_kind"] == "folder" and m["n_source_images"] == 8
    assert m["counts"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert set(m["groups"]) == {f"{c}-s{s}" for c in CORRUPTIONS for s in (1, 2, 3)}
    assert len(m["items"]) == 240
    src = {i.path: i for i in scan(MINI).items}
    for g, info in m["groups"].items():
        assert info["n"] == 8 and g == f"{info['corruption']}-s{info['severity']}"
        ds = scan(out / g, strict=True)
        assert ds.counts() == {"NORMAL": 4, "PNEUMONIA": 4}, g
    for it in m["items"]:
        f = out / it["path"]
        assert it["sha256"] == sha256_file(f)
        assert it["path"] == f"{it['corruption']}-s{it['severity']}/{('NORMAL', 'PNEUMONIA')[it['label']]}/{f.name}"
        assert src[it["source_path"]].sha256 == it["source_sha256"]
        assert src[it["source_path"]].label == it["label"]
        assert f.stem == it["source_path"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    with Image.open(out / m["items"][0]["path"]) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (224, 224)


def test_same_seed_same_files_other_seed_differs(stress_sets):
    def shas(key):
        m = load_stress_manifest(stress_sets[key][0])
        return {(it["corruption"], it["severity"], it["source_sha256"]): it["sha256"] for it in m["items"]}

    a, b, c = shas("a"), shas("b"), shas("c")
    assert a == b
    assert load_stress_manifest(stress_sets["a"][0])["sha256"] == load_stress_manifest(stress_sets["b"][0])["sha256"]
    assert set(a) == set(c)
    for name in CORRUPTIONS:
        same = [a[k] == c[k] for k in a if k[0] == name]
        if name in RANDOM:
            assert not all(same), name
        else:  # blur, jpeg and zoom draw nothing
            assert all(same), name


def test_split_manifest_source_uses_validation_only(tmp_path):
    split = tmp_path / "split.json"
    sm = make_split(MINI, 0.25, seed=0)
    sm.save(split)
    val = {it.path for it in sm.subset("val")}
    calls = []
    out = make_stress_set(split, tmp_path / "st", corruptions=["blur"], severities=[1],
                          progress=lambda done, total: calls.append((done, total)))
    m = load_stress_manifest(out, verify=True)
    assert m["source_kind"].startswith("split-val") and m["n_source_images"] == len(val)
    assert {it["source_path"] for it in m["items"]} == val
    assert list(m["groups"]) == ["blur-s1"]
    assert calls[-1] == (len(val), len(val)) and len(calls) == len(val)


def test_npz_source(tmp_path):
    out = make_stress_set(NPZ, tmp_path / "st", corruptions=["jpeg", "crop_pad"], severities=[2], max_images=6)
    m = load_stress_manifest(out, verify=True)
    assert m["source_kind"] == "npz" and m["n_source_images"] == 6 and len(m["items"]) == 12
    assert len({it["path"] for it in m["items"]}) == 12
    from edgecxr.shared.errors import ImageReadError
    from edgecxr.shared.intake import min_side

    with pytest.raises(ImageReadError, match="28 x 28 pixels"):  # a 28 px PNG from a user is not an X-ray
        scan(out / "jpeg-s2", strict=True)
    with min_side(28):  # ...but the stress set's own images are as small as their MedMNIST source
        for g in ("jpeg-s2", "crop_pad-s2"):
            assert len(scan(out / g, strict=True).items) == 6


def test_bad_inputs_are_clean_errors(tmp_path, stress_sets):
    p = run_cli("data", "stress", tmp_path / "nope", "--out", tmp_path / "o")
    assert_clean_error(p, "not found", str(tmp_path / "nope"))
    p = run_cli("data", "stress", MINI, "--out", tmp_path / "o", "--corruptions", "blur,fog")
    assert_clean_error(p, "unknown corruption 'fog'", "known", "exposure", "resample")
    p = run_cli("data", "stress", MINI, "--out", tmp_path / "o", "--severity", "1,4")
    assert_clean_error(p, "severity 4", "1, 2, 3")
    p = run_cli("data", "stress", MINI, "--out", tmp_path / "o", "--severity", "high")
    assert_clean_error(p, "--severity 'high'")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{}")
    p = run_cli("data", "stress", bad_json, "--out", tmp_path / "o")
    assert_clean_error(p, str(bad_json))
    assert not (tmp_path / "o").exists()
    # an existing output is refused and left as it was
    existing = stress_sets["a"][0]
    before = {f: f.read_bytes() for f in sorted(existing.rglob("*")) if f.is_file()}
    p = run_cli("data", "stress", MINI, "--out", existing, "--max-images", "4", "--corruptions", "blur")
    assert_clean_error(p, str(existing), "--force")
    assert {f: f.read_bytes() for f in sorted(existing.rglob("*")) if f.is_file()} == before
    # --force replaces it
    mine = tmp_path / "mine"
    (mine / "old").mkdir(parents=True)
    p = run_cli("data", "stress", MINI, "--out", mine, "--max-images", "4", "--corruptions", "blur",
                "--severity", "2", "--force")
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in mine.iterdir()) == ["blur-s2", "manifest.json"]


def test_load_stress_manifest_refuses_other_folders(tmp_path):
    with pytest.raises(DataError, match="not a stress set"):
        load_stress_manifest(MINI)
    with pytest.raises(DataError, match="not found"):
        load_stress_manifest(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "name": "calib"}))
    with pytest.raises(DataError, match="not a stress set manifest"):
        load_stress_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "edgecxr-stress", "schema": 99}))
    with pytest.raises(DataError, match="schema 99"):
        load_stress_manifest(tmp_path)


def test_import_does_not_pull_torch():
    code = ("import sys, edgecxr.shared.stress; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'matplotlib')); "
            "print(heavy); assert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
