"""Dataset ingestion and the recorded train/validation split.

Inputs: an image-folder tree ``ROOT/<CLASS>/*.{jpeg,jpg,png,dcm}`` with classes
NORMAL and PNEUMONIA (case-insensitive), or a MedMNIST ``.npz`` file.  The split
is seeded, stratified by label and grouped by patient where file names carry a
patient id (Kermany's do), and written once as a manifest every later step reads.

Device side: numpy + Pillow + pydicom only.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr import LABELS
from edgecxr.shared.errors import DataError, EdgeCXRError, ImageReadError
from edgecxr.shared.fsutil import atomic_write_json, sha256_bytes, sha256_file
from edgecxr.shared.imageio import is_candidate, load_grey

SPLIT_SCHEMA = 1
NPZ_SEP = "#"

_PATIENT_PATTERNS = [
    re.compile(r"^(person\d+)_", re.IGNORECASE),  # person1000_bacteria_2931
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE),  # IM-0115-0001, NORMAL2-IM-1427-0001
]


def patient_id(name: str) -> str | None:
    """Patient id from a Kermany-style file name, or None."""
    stem = Path(name).name
    for pat in _PATIENT_PATTERNS:
        m = pat.match(stem)
        if m:
            return m.group(1).lower()
    return None


@dataclass
class Item:
    path: str  # posix path relative to the data root, or "file.npz#split/index"
    label: int  # 0 = NORMAL, 1 = PNEUMONIA
    sha256: str
    patient: str | None = None
    split: str = ""


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Dataset:
    root: str
    kind: str  # "folder" | "npz"
    items: list[Item]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        lab = np.array([it.label for it in self.items], dtype=int)
        return {LABELS[0]: int((lab == 0).sum()), LABELS[1]: int((lab == 1).sum())}


def _class_dirs(root: Path) -> dict[int, Path | None]:
    found: dict[int, Path | None] = {0: None, 1: None}
    for child in sorted(root.iterdir()):
        if child.is_dir():
            for idx, name in enumerate(LABELS):
                if child.name.lower() == name.lower():
                    found[idx] = child
    return found


def scan_folder(root: str | Path, strict: bool = False,
                progress: Callable[[int, int], None] | None = None) -> Dataset:
    root = Path(root)
    if not root.exists():
        raise DataError("data folder not found", root)
    if not root.is_dir():
        raise DataError("not a folder (expected ROOT/NORMAL and ROOT/PNEUMONIA, or an .npz file)", root)
    dirs = _class_dirs(root)
    skipped: list[Skipped] = []
    notes: list[str] = []
    files: list[tuple[Path, int]] = []
    for label, d in dirs.items():
        if d is None:
            msg = f"missing class folder {LABELS[label]}/"
            if strict:
                raise DataError(msg, root)
            notes.append(msg)
            continue
        cands = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not cands:
            msg = f"class folder {d.name}/ is empty"
            if strict:
                raise DataError(msg, d)
            notes.append(msg)
        for p in cands:
            if not is_candidate(p):
                reason = f"not an image file (suffix {p.suffix or 'none'})"
                if strict:
                    raise ImageReadError(reason, p)
                skipped.append(Skipped(p.relative_to(root).as_posix(), reason))
                continue
            files.append((p, label))
    items: list[Item] = []
    for i, (p, label) in enumerate(files):
        rel = p.relative_to(root).as_posix()
        try:
            load_grey(p)
        except ImageReadError as e:
            if strict:
                raise
            skipped.append(Skipped(rel, e.message))
            continue
        items.append(Item(rel, label, sha256_file(p), patient_id(p.name)))
        if progress:
            progress(i + 1, len(files))
    ds = Dataset(str(root), "folder", items, skipped, notes)
    _check_two_classes(ds, root)
    return ds


def _check_two_classes(ds: Dataset, where: Path) -> None:
    c = ds.counts()
    if c[LABELS[0]] == 0 and c[LABELS[1]] == 0:
        raise DataError("no readable images found (expected ROOT/NORMAL/*.jpeg and ROOT/PNEUMONIA/*.jpeg)", where)
    for name, n in c.items():
        if n == 0:
            raise DataError(f"single-class dataset: no readable {name} images", where)


def npz_array(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"unreadable .npz ({e.__class__.__name__})", path) from None
    with z:
        ki, kl = f"{split}_images", f"{split}_labels"
        if ki not in z.files or kl not in z.files:
            raise DataError(f"missing keys {ki}/{kl} (MedMNIST layout expected)", path)
        return np.asarray(z[ki]), np.asarray(z[kl]).reshape(-1)


NPZ_PARTS = ("train", "val", "test")


def npz_source(source: str | Path) -> tuple[Path, str | None]:
    """'FILE.npz' or 'FILE.npz#PART' (PART: train, val or test) -> (path, part or None)."""
    text = str(source)
    if NPZ_SEP in text:
        head, part = text.rsplit(NPZ_SEP, 1)
        if head.lower().endswith(".npz"):
            if part not in NPZ_PARTS:
                raise DataError(f"unknown .npz part {part!r}; use {', '.join(NPZ_PARTS)}", head)
            return Path(head), part
    return Path(source), None


def scan_npz(path: str | Path, strict: bool = False, purpose: str = "eval") -> Dataset:
    """A MedMNIST-layout .npz.

    ``purpose="split"`` (training): the ``train`` and ``val`` arrays, each item marked with its
    official part; ``test`` is never read.  ``purpose="eval"``: one part, named as
    ``FILE.npz#PART`` or by default ``test`` where the file has it, else ``val``; the part
    used is written in the dataset's notes, and reading ``train`` says that these are training
    images.
    """
    path, part = npz_source(path)
    if not path.exists():
        raise DataError("file not found", path)
    try:
        z = np.load(path, allow_pickle=False)
        keys = list(z.files)
        z.close()
    except Exception as e:
        raise DataError(f"unreadable .npz ({e.__class__.__name__})", path) from None
    present = [s for s in NPZ_PARTS if f"{s}_images" in keys]
    notes = []
    if purpose == "split":
        if part is not None:
            raise DataError("a training split reads the train and val arrays; drop the #part", path)
        splits = [s for s in ("train", "val") if s in present]
        if "test" in present:
            notes.append("test_images ignored: the test split is held out")
        if not splits:
            raise DataError("no train_images/val_images arrays (MedMNIST layout expected)", path)
    else:
        if part is None:
            part = "test" if "test" in present else "val" if "val" in present else None
            if part is None:
                raise DataError("no test_images or val_images array to evaluate on (MedMNIST layout expected; "
                                "FILE.npz#train would score training images)", path)
        elif part not in present:
            raise DataError(f"no {part}_images array (the file has: {', '.join(present) or 'none'})", path)
        splits = [part]
        notes.append(f"evaluating the official {part} part of {path.name}"
                     + (" (training images: scores on them say nothing about new patients)" if part == "train" else ""))
    items: list[Item] = []
    skipped: list[Skipped] = []
    for s in splits:
        imgs, labels = npz_array(path, s)
        if imgs.ndim == 4 and imgs.shape[-1] in (1, 3):
            pass
        elif imgs.ndim != 3:
            raise DataError(f"{s}_images has shape {imgs.shape}; expected N x H x W", path)
        if len(imgs) != len(labels):
            raise DataError(f"{s}_images and {s}_labels differ in length", path)
        for i in range(len(imgs)):
            ref = f"{path.name}{NPZ_SEP}{s}/{i}"
            lab = int(labels[i])
            if lab not in (0, 1):
                reason = f"label {lab} is not 0 or 1"
                if strict:
                    raise DataError(f"{ref}: {reason}", path)
                skipped.append(Skipped(ref, reason))
                continue
            items.append(Item(ref, lab, sha256_bytes(np.ascontiguousarray(imgs[i]).tobytes()), None,
                              split=s if purpose == "split" else ""))
    ds = Dataset(str(path.parent), "npz", items, skipped, notes)
    _check_two_classes(ds, path)
    return ds


def scan(source: str | Path, strict: bool = False,
         progress: Callable[[int, int], None] | None = None, purpose: str = "eval") -> Dataset:
    """Labelled images of a class-folder tree or a MedMNIST .npz (``FILE.npz#PART`` names a part)."""
    if npz_source(source)[0].suffix.lower() == ".npz":
        return scan_npz(source, strict, purpose)
    return scan_folder(Path(source), strict, progress)


def split_dataset(ds: Dataset, val_fraction: float = 0.2, seed: int = 0) -> list[Item]:
    """Seeded, label-stratified, patient-grouped train/val assignment (in place)."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction {val_fraction} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    for label in (0, 1):
        groups: dict[str, list[Item]] = {}
        for it in ds.items:
            if it.label == label:
                key = it.patient or f"__file__:{it.path}"
                groups.setdefault(key, []).append(it)
        keys = sorted(groups)
        order = rng.permutation(len(keys))
        total = sum(len(g) for g in groups.values())
        target = int(round(val_fraction * total))
        n_val = 0
        for j in order:
            g = groups[keys[j]]
            to_val = n_val < target
            for it in g:
                it.split = "val" if to_val else "train"
            if to_val:
                n_val += len(g)
    return ds.items


@dataclass
class SplitManifest:
    root: str
    kind: str
    seed: int
    val_fraction: float
    items: list[Item]
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    grouped_by_patient: bool = False
    path: str | None = None  # where this manifest was read from

    def subset(self, split: str) -> list[Item]:
        return [it for it in self.items if it.split == split]

    def resolve(self, item: Item) -> str:
        return str(Path(self.root) / item.path.split(NPZ_SEP)[0])

    def load(self, item: Item) -> np.ndarray:
        """The item's grey [0,1] image."""
        return load_item(self.root, item)

    def to_dict(self) -> dict[str, Any]:
        tr, va = self.subset("train"), self.subset("val")
        return {
            "schema": SPLIT_SCHEMA,
            "kind": self.kind,
            "root": self.root,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "grouped_by_patient": self.grouped_by_patient,
            "counts": {
                "train": {LABELS[k]: sum(1 for it in tr if it.label == k) for k in (0, 1)},
                "val": {LABELS[k]: sum(1 for it in va if it.label == k) for k in (0, 1)},
            },
            "notes": self.notes,
            "skipped": [asdict(s) for s in self.skipped],
            "items": [asdict(it) for it in self.items],
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def read(cls, path: str | Path, root: str | Path | None = None) -> SplitManifest:
        path = Path(path)
        if not path.exists():
            raise DataError("split manifest not found (make one with `edgecxr data split`)", path)
        try:
            d = json.loads(path.read_text())
            if d.get("schema") != SPLIT_SCHEMA:
                raise DataError(f"unsupported split manifest schema {d.get('schema')}", path)
            items = [Item(**it) for it in d["items"]]
            skipped = [Skipped(**s) for s in d.get("skipped", [])]
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"not a valid split manifest ({e.__class__.__name__}: {e})", path) from None
        r = Path(root) if root is not None else Path(d["root"])
        if not r.is_absolute() and root is None:
            # Relative roots are relative to the manifest's own folder.
            r = (path.parent / r).resolve() if not r.exists() else r
        return cls(str(r), d["kind"], d["seed"], d["val_fraction"], items, skipped,
                   d.get("notes", []), d.get("grouped_by_patient", False), str(path))


def make_split(source: str | Path, val_fraction: float = 0.2, seed: int = 0,
               strict: bool = False, progress: Callable[[int, int], None] | None = None,
               root_as: str | None = None, resplit: bool = False) -> SplitManifest:
    """Seeded, stratified, patient-grouped train/val split; an .npz keeps its official
    train/val parts unless ``resplit`` (or it lacks one of them)."""
    ds = scan(source, strict, progress, purpose="split")
    official = ds.kind == "npz" and {it.split for it in ds.items} == {"train", "val"}
    if official and not resplit:
        ds.notes.append("official train/val parts of the .npz kept (pass --resplit to re-split)")
        val_fraction = sum(it.split == "val" for it in ds.items) / max(len(ds.items), 1)
    else:
        split_dataset(ds, val_fraction, seed)
    grouped = any(it.patient for it in ds.items)
    return SplitManifest(root_as or ds.root, ds.kind, seed, val_fraction, ds.items, ds.skipped,
                         ds.notes, grouped)


def load_item(root: str | Path, item: Item) -> np.ndarray:
    if NPZ_SEP in item.path:
        fname, ref = item.path.split(NPZ_SEP, 1)
        split, idx = ref.split("/")
        imgs, _ = _npz_cache(str(Path(root) / fname), split)
        arr = imgs[int(idx)]
        if arr.ndim == 3:
            arr = arr[..., 0] if arr.shape[-1] == 1 else (
                arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114)
        return (arr.astype(np.float32) / 255.0)
    return load_grey(Path(root) / item.path)


# Preprocessed images shared by every step of one run (``image_memo``): demo and pipeline decode and
# preprocess each evaluation and stress image once, not once per bundle in bench and gate.
_MEMO: dict[tuple[str, str, str, str], tuple[np.ndarray, float]] | None = None


@contextlib.contextmanager
def image_memo() -> Iterator[None]:
    """Inside: ``load_preprocessed`` keeps each image it made (keyed by root, path, sha256 and the
    preprocessing) until the outermost block ends. Outside it nothing is kept (a server, a board)."""
    global _MEMO
    outer = _MEMO
    if outer is None:
        _MEMO = {}
    try:
        yield
    finally:
        if outer is None:
            _MEMO = None


def within_image_memo(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: ``fn`` runs inside ``image_memo`` (a whole demo or pipeline tail)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with image_memo():
            return fn(*args, **kwargs)

    return wrapper


def memoised(key: tuple, make: Callable[[], Any]) -> Any:
    """Inside ``image_memo``: what ``make()`` returned the first time for ``key`` in this run (for
    values that follow from their key alone, such as one model's logits on one image list).
    Outside: ``make()`` every time."""
    if _MEMO is None:
        return make()
    k = ("memo",) + tuple(key)
    if k not in _MEMO:
        v = make()
        for a in (v if isinstance(v, tuple) else (v,)):
            if isinstance(a, np.ndarray):
                a.setflags(write=False)  # shared by every later caller: nobody may change it
        _MEMO[k] = v  # type: ignore[assignment]
    return _MEMO[k]


def load_preprocessed(root: str | Path, item: Item, pp: Any) -> tuple[np.ndarray, float]:
    """``item`` decoded and preprocessed with ``pp``, and the milliseconds that took (when it was
    made; a memoised image reports the time it took then)."""
    from edgecxr.shared.preprocess import preprocess_grey

    key = (str(root), item.path, item.sha256, repr(pp))
    if _MEMO is not None and key in _MEMO:
        return _MEMO[key]
    t = time.perf_counter()
    x = preprocess_grey(load_item(root, item), pp)
    out = (x, (time.perf_counter() - t) * 1000)
    if _MEMO is not None:
        x.setflags(write=False)
        _MEMO[key] = out
    return out


_NPZ: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def _npz_cache(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    key = (path, split)
    if key not in _NPZ:
        _NPZ[key] = npz_array(Path(path), split)
    return _NPZ[key]


def iter_images(source: str | Path, strict: bool = False) -> Iterator[tuple[Item, np.ndarray | None, str | None]]:
    """Labelled images from a folder tree or npz, for evaluation (no split)."""
    ds = scan(source, strict)
    root = ds.root
    for it in ds.items:
        try:
            yield it, load_item(root, it), None
        except EdgeCXRError as e:
            if strict:
                raise
            yield it, None, e.message


def load_eval_set(source: str | Path, strict: bool = False) -> tuple[list[Item], list[np.ndarray], Dataset]:
    """Every readable labelled image of a folder tree or npz (skipped ones reported in the Dataset)."""
    ds = scan(source, strict)
    arrays = [load_item(ds.root, it) for it in ds.items]
    return ds.items, arrays, ds
