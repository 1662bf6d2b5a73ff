import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecxr.shared.data import SplitManifest, make_split, patient_id, scan
from edgecxr.shared.errors import DataError, ImageReadError

from .conftest import MINI, NPZ, SHARED, assert_clean_error, run_cli


def test_patient_ids():
    assert patient_id("person1000_bacteria_2931.jpeg") == "person1000"
    assert patient_id("IM-0115-0001.jpeg") == "im-0115"
    assert patient_id("NORMAL2-IM-1427-0001.jpeg") == "normal2-im-1427"
    assert patient_id("IM-0629-0001-0002.jpeg") == "im-0629"
    assert patient_id("scan.png") is None


def test_split_is_seeded_stratified_grouped(tmp_path):
    a = make_split(MINI, 0.25, seed=3)
    b = make_split(MINI, 0.25, seed=3)
    c = make_split(MINI, 0.25, seed=4)
    assert [(i.path, i.split) for i in a.items] == [(i.path, i.split) for i in b.items]
    assert [(i.path, i.split) for i in a.items] != [(i.path, i.split) for i in c.items]
    for lab in (0, 1):
        n = sum(1 for i in a.items if i.label == lab)
        nv = sum(1 for i in a.items if i.label == lab and i.split == "val")
        assert abs(nv - 0.25 * n) <= 3
    tr = {i.patient for i in a.items if i.split == "train"}
    va = {i.patient for i in a.items if i.split == "val"}
    assert not tr & va
    a.save(tmp_path / "s.json")
    a.save(tmp_path / "s2.json")
    assert (tmp_path / "s.json").read_bytes() == (tmp_path / "s2.json").read_bytes()
    back = SplitManifest.read(tmp_path / "s.json")
    assert len(back.subset("val")) == len(a.subset("val")) and back.items[0].sha256 == a.items[0].sha256
    assert back.load(back.items[0]).ndim == 2


@pytest.mark.skipif(not (SHARED / "kermany224" / "train").exists(), reason="../shared/data not here")
def test_patient_grouping_on_the_full_train_split():
    """The committed split of the whole Kermany train set keeps each patient on one side."""
    from pathlib import Path

    sm = SplitManifest.read(Path(__file__).resolve().parent.parent / "splits" / "kermany224.json")
    tr = {i.patient for i in sm.items if i.split == "train"}
    va = {i.patient for i in sm.items if i.split == "val"}
    assert len(sm.items) == 5216 and not tr & va
    frac = len(sm.subset("val")) / len(sm.items)
    assert 0.18 < frac < 0.22


def test_bad_inputs_skipped_or_strict(tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(MINI, root)
    (root / "NORMAL" / "notes.txt").write_text("hello")
    (root / "PNEUMONIA" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    good = next((root / "NORMAL").glob("*.jpeg"))
    (root / "NORMAL" / "truncated.jpeg").write_bytes(good.read_bytes()[:500])
    ds = scan(root)
    reasons = {s.path: s.reason for s in ds.skipped}
    assert set(reasons) == {"NORMAL/notes.txt", "PNEUMONIA/broken.jpeg", "NORMAL/truncated.jpeg"}
    assert len(ds.items) == 64
    with pytest.raises((ImageReadError, DataError)):
        scan(root, strict=True)


def test_single_class_and_missing_folder(tmp_path):
    root = tmp_path / "one"
    shutil.copytree(MINI / "NORMAL", root / "normal")  # case-insensitive class names
    with pytest.raises(DataError, match="single-class"):
        scan(root)
    with pytest.raises(DataError, match="missing class folder"):
        scan(root, strict=True)
    (root / "PNEUMONIA").mkdir()
    with pytest.raises(DataError, match="single-class"):
        scan(root)
    with pytest.raises(DataError, match="not found"):
        scan(tmp_path / "nope")


def test_npz(tmp_path):
    z = np.load(NPZ)
    ds = scan(NPZ)  # evaluation: one official part, test where present, else val, and it says which
    assert len(ds.items) == len(z["val_labels"]) and "official val part" in ds.notes[-1]
    tr = scan(f"{NPZ}#train")
    assert len(tr.items) == len(z["train_labels"]) and "training images" in tr.notes[-1]
    with pytest.raises(DataError, match="no test_images"):
        scan(f"{NPZ}#test")
    with pytest.raises(DataError, match="unknown .npz part"):
        scan(f"{NPZ}#everything")
    # a training split keeps the official train/val parts unless asked to re-split
    sm = make_split(NPZ, 0.2, 0)
    assert sum(it.split == "train" for it in sm.items) == len(z["train_labels"])
    assert sum(it.split == "val" for it in sm.items) == len(z["val_labels"])
    assert all(it.path.split("#")[1].split("/")[0] == it.split for it in sm.items)
    re = make_split(NPZ, 0.5, 0, resplit=True)
    assert abs(sum(it.split == "val" for it in re.items) - 0.5 * len(re.items)) <= 2
    # a file with a test part: evaluation defaults to it, and a split never reads it
    full = tmp_path / "full.npz"
    np.savez(full, train_images=z["train_images"], train_labels=z["train_labels"],
             val_images=z["val_images"][:20], val_labels=z["val_labels"][:20],
             test_images=z["val_images"][20:], test_labels=z["val_labels"][20:])
    ev = scan(full)
    assert len(ev.items) == 20 and all("#test/" in it.path for it in ev.items)
    sp = make_split(full, 0.2, 0)
    assert not any("#test/" in it.path for it in sp.items) and any("held out" in n for n in sp.notes)
    only_test = tmp_path / "test_only.npz"
    np.savez(only_test, test_images=z["val_images"], test_labels=z["val_labels"])
    assert len(scan(only_test).items) == len(z["val_labels"])
    with pytest.raises(DataError, match="no train_images/val_images"):
        make_split(only_test, 0.2, 0)
    img = sm.load(sm.items[0])
    assert img.shape == (28, 28) and img.max() <= 1.0
    bad = tmp_path / "bad.npz"
    np.savez(bad, foo=np.zeros(3))
    with pytest.raises(DataError, match="MedMNIST"):
        scan(bad)


def test_cli_split_and_errors(tmp_path):
    out = tmp_path / "s.json"
    p = run_cli("data", "split", MINI, "--out", out, "--seed", "1")
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())
    assert d["seed"] == 1 and d["grouped_by_patient"] and len(d["items"]) == 64
    before = out.read_bytes()
    p = run_cli("data", "split", MINI, "--out", out, "--seed", "2")
    assert_clean_error(p, str(out), "--force")
    assert out.read_bytes() == before  # an earlier result is never overwritten
    assert_clean_error(run_cli("data", "split", tmp_path / "missing", "--out", tmp_path / "x.json"), "not found")
    empty = tmp_path / "empty"
    (empty / "NORMAL").mkdir(parents=True)
    (empty / "PNEUMONIA").mkdir()
    p = run_cli("data", "split", empty, "--out", tmp_path / "y.json")
    assert_clean_error(p, "no readable images")
    assert not (tmp_path / "y.json").exists()
    p = run_cli("data", "split", empty, "--out", tmp_path / "y.json", "--strict")
    assert_clean_error(p, "empty")


def test_calibration_set_from_an_npz_keeps_its_28_px_images(tmp_path):
    """Regression (issue 27): the MedMNIST path stopped at export on its own calibration set, because the
    64 px intake rule was relaxed for stress sets made from an .npz but not for calibration sets."""
    from edgecxr.host.calibrate import load_calibration_set, make_calibration_set
    from edgecxr.shared.imageio import load_grey

    # PneumoniaMNIST holds exact duplicates across its train and val parts: one here, made on purpose
    z = dict(np.load(NPZ))
    z["train_images"][: len(z["val_images"])] = z["val_images"]
    z["train_labels"][: len(z["val_labels"])] = z["val_labels"]
    dup = tmp_path / "dup.npz"
    np.savez(dup, **z)
    sp = tmp_path / "split.json"
    sm = make_split(dup, 0.2, 0)
    sm.save(sp)
    n_train = sum(it.split == "train" for it in sm.items)
    cal = make_calibration_set(sp, tmp_path / "cal", "mm", n=n_train)
    m = json.loads((cal / "manifest.json").read_text())
    assert m["source_kind"] == "npz" and m["excluded_duplicates_of_held_back_images"] == len(z["val_labels"])
    assert m["n"] == n_train - len(z["val_labels"])
    val_shas = {it.sha256 for it in sm.items if it.split == "val"}
    cs = load_calibration_set(cal, forbid_sha256=val_shas)  # what export checks: no evaluation image in it
    assert len(cs.greys) == m["n"] and all(g.shape == (28, 28) for g in cs.greys)
    # the relaxation is scoped to the set's own loader: the same 28 px file alone is still refused
    with pytest.raises(ImageReadError, match="at least 64"):
        load_grey(cal / m["items"][0]["path"])


def test_image_memo_decodes_each_image_once_inside_and_keeps_nothing_outside():
    """demo and pipeline share preprocessed images between bench and gate (issue 28): inside
    image_memo the same image comes back without decoding again, equal to a fresh decode; outside
    it every call decodes."""
    from edgecxr.shared import data as D
    from edgecxr.shared.preprocess import PreprocessConfig

    root = Path(__file__).resolve().parents[1] / "data" / "kermany224-val"
    ds = D.scan(root)
    it = sorted(ds.items, key=lambda i: i.path)[0]
    pp = PreprocessConfig(size=64)
    fresh, _ = D.load_preprocessed(ds.root, it, pp)
    again, _ = D.load_preprocessed(ds.root, it, pp)
    assert fresh is not again and D._MEMO is None
    with D.image_memo():
        a, ms = D.load_preprocessed(ds.root, it, pp)
        with D.image_memo():
            b, ms_b = D.load_preprocessed(ds.root, it, pp)
        assert a is b and ms == ms_b and not a.flags.writeable
        c, _ = D.load_preprocessed(ds.root, it, PreprocessConfig(size=96))
        assert c.shape[-1] == 96
    assert D._MEMO is None
    np.testing.assert_array_equal(a, fresh)
