"""A seeded shift stress set for chest X-rays (ImageNet-C style).

What differs between hospitals and X-ray machines, as image corruptions with three
severities each: exposure, contrast, gamma (another detector response or display
curve), quantum and sensor noise, blur, JPEG re-compression, zoom (another field of
view), crop and pad (another collimation or positioning), rotation, and another
resize filter.  Severity 1 is mild; severity 3 is strong but still a readable
radiograph.  Every random choice (brighter or darker, rotation sign, the noise
itself...) comes from a generator seeded per image from the seed, the source
image's sha256, the corruption and the severity, so an image's stressed versions do
not depend on which other images are in the set or in which order they run.

``make_stress_set`` writes ``OUT/<corruption>-s<severity>/{NORMAL,PNEUMONIA}/*.png``
(each folder a labelled ``--data`` folder) and ``OUT/manifest.json``, which records
the recipe (every parameter per severity), the source and every file's sha256.

Device side: numpy and Pillow only.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr import LABELS
from edgecxr.shared.data import NPZ_SEP, Item, SplitManifest, load_item, scan
from edgecxr.shared.errors import DataError, EdgeCXRError
from edgecxr.shared.fsutil import atomic_dir, sha256_bytes, sha256_file

RECIPE_VERSION = 1
MANIFEST = "manifest.json"
KIND = "edgecxr-stress"
SCHEMA = 1
SEVERITIES = (1, 2, 3)
REF_SIZE = 224  # sizes in pixels below are at 224 px and scale with min(H, W) / 224

# Per-severity parameters (index 0 = severity 1).  The recipe in every manifest is
# built from this table, so what is recorded is what was applied.
PARAMS: dict[str, dict[str, Any]] = {
    "exposure": {
        "what": "brightness shift: grey + shift (brighter) or grey - shift (darker), drawn per image",
        "shift": (0.05, 0.10, 0.16),
    },
    "contrast": {
        "what": "contrast around the image mean: mean + (grey - mean) * f, f = `reduce` or `increase` "
                "drawn per image",
        "reduce": (0.8, 0.65, 0.5),
        "increase": (1.2, 1.4, 1.6),
    },
    "gamma": {
        "what": "another detector/display curve: grey ** g, g = gamma (darker) or 1 / gamma (brighter) "
                "drawn per image",
        "gamma": (1.2, 1.45, 1.75),
    },
    "noise": {
        "what": "quantum noise: Poisson counts of `photons` * exp(-mu * grey) (the transmitted beam: "
                "bright, attenuating regions get fewer photons), -log(counts / photons) / mu back to grey; plus Gaussian "
                "sensor noise `sigma`",
        "photons": (4000.0, 1500.0, 600.0),
        "sigma": (0.005, 0.01, 0.02),
        "mu": (3.0, 3.0, 3.0),  # grey 1 transmits exp(-3) = 5% of the beam
    },
    "blur": {
        "what": "PIL GaussianBlur on the 8-bit image, radius in pixels at 224 px",
        "radius": (1.0, 1.7, 2.6),
    },
    "jpeg": {
        "what": "PIL JPEG re-compression of the 8-bit image",
        "quality": (35, 18, 10),
    },
    "zoom": {
        "what": "centre zoom-in (another field of view): central 1/factor crop, bilinear back to size",
        "factor": (1.1, 1.22, 1.38),
    },
    "crop_pad": {
        "what": "content shifted by `shift` of the size in a random direction (angle drawn per image), "
                "cut off on one side and black on the other (another collimation or positioning)",
        "shift": (0.05, 0.10, 0.16),
    },
    "rotation": {
        "what": "rotation by +/- `degrees` (sign drawn per image), bilinear, corners filled black",
        "degrees": (5.0, 10.0, 15.0),
    },
    "resample": {
        "what": "another resize filter: down by `factor` with nearest or box (drawn per image), "
                "bilinear back up",
        "factor": (1.6, 2.5, 4.0),
    },
}


def _p(name: str, key: str, severity: int):
    return PARAMS[name][key][severity - 1]


def _scale(grey: np.ndarray) -> float:
    return min(grey.shape[:2]) / REF_SIZE


def _to_u8(grey: np.ndarray) -> np.ndarray:
    return np.round(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pil_f(grey: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")


def _unit(fn: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]):
    """Make a corruption take any grey array and return float32 in [0, 1] of the same size."""

    @functools.wraps(fn)
    def wrapped(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        g = np.asarray(grey, dtype=np.float32)
        out = np.asarray(fn(g, int(severity), rng), dtype=np.float32)
        return np.clip(out, 0.0, 1.0)

    return wrapped


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


# ---------------------------------------------------------------- photometric
@_unit
def exposure(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return grey + _sign(rng) * _p("exposure", "shift", severity)


@_unit
def contrast(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    f = _p("contrast", "increase" if _sign(rng) > 0 else "reduce", severity)
    m = float(grey.mean())
    return m + (grey - m) * f


@_unit
def gamma(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    g = _p("gamma", "gamma", severity)
    if _sign(rng) > 0:
        g = 1.0 / g
    return np.power(np.clip(grey, 0.0, 1.0), g)


@_unit
def noise(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    photons = _p("noise", "photons", severity)
    sigma = _p("noise", "sigma", severity)
    mu = _p("noise", "mu", severity)
    g = np.clip(grey, 0.0, 1.0).astype(np.float64)
    counts = np.maximum(rng.poisson(photons * np.exp(-mu * g)), 1)
    quantum = -np.log(counts / photons) / mu
    return quantum + rng.normal(0.0, sigma, size=grey.shape)


@_unit
def blur(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageFilter

    r = _p("blur", "radius", severity) * _scale(grey)
    im = Image.fromarray(_to_u8(grey), mode="L").filter(ImageFilter.GaussianBlur(r))
    return np.asarray(im, dtype=np.float32) / 255.0


@_unit
def jpeg(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_to_u8(grey), mode="L").save(buf, format="JPEG", quality=int(_p("jpeg", "quality", severity)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


# ---------------------------------------------------------------- geometric
@_unit
def zoom(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = grey.shape
    f = _p("zoom", "factor", severity)
    ch, cw = h / f, w / f
    top, left = (h - ch) / 2.0, (w - cw) / 2.0
    im = _pil_f(grey).resize((w, h), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    return np.asarray(im, dtype=np.float32)


@_unit
def crop_pad(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    h, w = grey.shape
    f = _p("crop_pad", "shift", severity)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    dy, dx = int(round(f * h * np.sin(theta))), int(round(f * w * np.cos(theta)))
    out = np.zeros_like(grey)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = grey[ys, xs]
    return out


@_unit
def rotation(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    deg = _sign(rng) * _p("rotation", "degrees", severity)
    im = _pil_f(grey).rotate(deg, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=0.0)
    return np.asarray(im, dtype=np.float32)


@_unit
def resample(grey: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    h, w = grey.shape
    f = _p("resample", "factor", severity)
    down = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BOX
    small = _pil_f(grey).resize((max(1, round(w / f)), max(1, round(h / f))), down)
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "exposure": exposure,
    "contrast": contrast,
    "gamma": gamma,
    "noise": noise,
    "blur": blur,
    "jpeg": jpeg,
    "zoom": zoom,
    "crop_pad": crop_pad,
    "rotation": rotation,
    "resample": resample,
}
assert set(CORRUPTIONS) == set(PARAMS)


# ---------------------------------------------------------------- recipe
def check_choice(severities: Iterable[int] | None = None,
                 corruptions: Iterable[str] | None = None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Validated (severities, corruptions); None means all.  Order kept, duplicates dropped."""
    sev_in = list(SEVERITIES if severities is None else severities)
    cor_in = list(CORRUPTIONS if corruptions is None else corruptions)
    sevs: list[int] = []
    for s in sev_in:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or int(s) not in SEVERITIES:
            raise EdgeCXRError(f"severity {s!r} is not one of {', '.join(map(str, SEVERITIES))}")
        if int(s) not in sevs:
            sevs.append(int(s))
    cors: list[str] = []
    for c in cor_in:
        if c not in CORRUPTIONS:
            raise EdgeCXRError(f"unknown corruption {c!r}; known: {', '.join(CORRUPTIONS)}")
        if c not in cors:
            cors.append(c)
    if not sevs:
        raise EdgeCXRError(f"no severity chosen; known: {', '.join(map(str, SEVERITIES))}")
    if not cors:
        raise EdgeCXRError(f"no corruption chosen; known: {', '.join(CORRUPTIONS)}")
    return tuple(sevs), tuple(cors)


def image_rng(seed: int, sha256: str, corruption: str, severity: int) -> np.random.Generator:
    """The generator for one image, corruption and severity (independent of iteration order)."""
    digest = hashlib.sha256(f"{int(seed)}:{sha256}:{corruption}:{int(severity)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def recipe(seed: int = 0, severities: Iterable[int] | None = SEVERITIES,
           corruptions: Iterable[str] | None = None) -> dict[str, Any]:
    """Exactly what is applied: every corruption's parameters at each chosen severity."""
    sevs, cors = check_choice(severities, corruptions)
    out: dict[str, Any] = {}
    for c in cors:
        spec = PARAMS[c]
        out[c] = {
            "what": spec["what"],
            "severities": {str(s): {k: v[s - 1] for k, v in spec.items() if k != "what"} for s in sevs},
        }
    return {
        "version": RECIPE_VERSION,
        "seed": int(seed),
        "severities": list(sevs),
        "corruptions": out,
        "rng": "numpy default_rng seeded from sha256(f'{seed}:{source_sha256}:{corruption}:{severity}')[:16]",
        "pixel_sizes_at": REF_SIZE,
        "input": "grey float32 in [0, 1]; output clipped to [0, 1], same height and width",
    }


def corrupt(grey: np.ndarray, corruption: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply one corruption: grey HxW in [0, 1] -> grey float32 HxW in [0, 1]."""
    check_choice([severity], [corruption])
    g = np.asarray(grey, dtype=np.float32)
    if g.ndim != 2:
        raise EdgeCXRError(f"expected a grey H x W image, got shape {g.shape}")
    return CORRUPTIONS[corruption](g, int(severity), rng)


def stress_arrays(greys: Sequence[np.ndarray], shas: Sequence[str], seed: int = 0,
                  severities: Iterable[int] = SEVERITIES,
                  corruptions: Iterable[str] | None = None) -> Iterator[tuple[str, int, int, np.ndarray]]:
    """(corruption, severity, index, stressed grey) for in-memory images, corruption-major."""
    sevs, cors = check_choice(severities, corruptions)
    if len(greys) != len(shas):
        raise EdgeCXRError(f"{len(greys)} images but {len(shas)} sha256 values")
    for c in cors:
        for s in sevs:
            for i, (g, sha) in enumerate(zip(greys, shas, strict=True)):
                yield c, s, i, corrupt(g, c, s, image_rng(seed, sha, c, s))


# ---------------------------------------------------------------- the set on disk
def _source_items(source: Path) -> tuple[list[Item], str, str, list[dict[str, str]]]:
    """(items, root, kind, skipped) of a folder, a MedMNIST .npz or a split manifest's validation part."""
    if source.suffix.lower() == ".json":
        sm = SplitManifest.read(source)
        items = sm.subset("val")
        if not items:
            raise DataError("split manifest has no validation images", source)
        if {it.label for it in items} != {0, 1}:
            raise DataError("the split's validation part holds a single class", source)
        return items, sm.root, f"split-val ({sm.kind})", []
    ds = scan(source)
    return ds.items, ds.root, ds.kind, [{"path": s.path, "reason": s.reason} for s in ds.skipped]


def select(items: Sequence[Item], max_images: int, seed: int) -> list[Item]:
    """A stratified, seeded subset of ``max_images`` (0 = all), in sorted path order."""
    items = sorted(items, key=lambda it: it.path)
    if not max_images or max_images >= len(items):
        return items
    if max_images < 2:
        raise DataError(f"--max-images {max_images} is too small (at least 2, one per class)")
    rng = np.random.default_rng(seed)
    pos = [it for it in items if it.label == 1]
    neg = [it for it in items if it.label == 0]
    k = min(len(pos), max(1, round(max_images * len(pos) / len(items))))
    k_neg = min(len(neg), max(1, max_images - k))
    chosen = [pos[i] for i in rng.choice(len(pos), size=k, replace=False)]
    chosen += [neg[i] for i in rng.choice(len(neg), size=k_neg, replace=False)]
    return sorted(chosen, key=lambda it: it.path)


def _out_names(items: Sequence[Item]) -> list[str]:
    """A unique PNG name per item within its label folder (the source stem; sha prefix on a clash)."""
    used: set[tuple[int, str]] = set()
    names = []
    for it in items:
        ref = it.path.replace(NPZ_SEP, "_").replace("/", "_") if NPZ_SEP in it.path else Path(it.path).stem
        name = f"{ref}.png"
        if (it.label, name.lower()) in used:
            name = f"{ref}-{it.sha256[:12]}.png"
        used.add((it.label, name.lower()))
        names.append(name)
    return names


def _png(grey: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_to_u8(grey), mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def group_name(corruption: str, severity: int) -> str:
    return f"{corruption}-s{severity}"


def set_hash(shas: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()


def make_stress_set(source: str | Path, out_dir: str | Path, seed: int = 0,
                    severities: Iterable[int] = SEVERITIES, corruptions: Iterable[str] | None = None,
                    max_images: int = 0, force: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the stress set of ``source`` to ``out_dir`` (atomically) and return its path.

    ``progress(done, total)`` is called after each source image.
    """
    sevs, cors = check_choice(severities, corruptions)
    source, final = Path(source), Path(out_dir)
    if max_images < 0:
        raise DataError(f"--max-images {max_images} must be 0 (all) or positive")
    if final.exists() and not force:
        raise EdgeCXRError("stress set output exists; use --force to replace it", final)
    all_items, root, kind, skipped = _source_items(source)
    items = select(all_items, max_images, seed)
    names = _out_names(items)
    records: list[dict[str, Any]] = []
    with atomic_dir(final, force=True) as tmp:
        for c in cors:
            for s in sevs:
                for lab in LABELS:
                    (tmp / group_name(c, s) / lab).mkdir(parents=True, exist_ok=True)
        for i, (it, name) in enumerate(zip(items, names, strict=True)):
            grey = load_item(root, it)
            for c in cors:
                for s in sevs:
                    out = corrupt(grey, c, s, image_rng(seed, it.sha256, c, s))
                    data = _png(out)
                    rel = f"{group_name(c, s)}/{LABELS[it.label]}/{name}"
                    (tmp / rel).write_bytes(data)
                    records.append({"path": rel, "label": it.label, "sha256": sha256_bytes(data),
                                    "source_path": it.path, "source_sha256": it.sha256,
                                    "corruption": c, "severity": s})
            if progress:
                progress(i + 1, len(items))
        records.sort(key=lambda r: r["path"])
        groups = {}
        for c in cors:
            for s in sevs:
                g = group_name(c, s)
                groups[g] = {"corruption": c, "severity": s,
                             "n": sum(1 for r in records if r["corruption"] == c and r["severity"] == s)}
        manifest = {
            "kind": KIND,
            "schema": SCHEMA,
            "recipe": recipe(seed, sevs, cors),
            "source": str(source),
            "source_kind": kind,
            "source_file_sha256": sha256_file(source) if source.is_file() else None,
            "n_source_images": len(items),
            "n_source_available": len(all_items),
            "max_images": int(max_images),
            "counts": {LABELS[k]: sum(1 for it in items if it.label == k) for k in (0, 1)},
            "skipped_source_files": skipped,
            "sha256": set_hash(r["sha256"] for r in records),
            "groups": groups,
            "items": records,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return final


def load_stress_manifest(path: str | Path, verify: bool = False) -> dict[str, Any]:
    """The manifest of a stress set (its folder or its manifest.json), validated.

    ``verify``: also check that every image is there with its recorded sha256.
    """
    path = Path(path)
    mp = path / MANIFEST if path.is_dir() else path
    folder = mp.parent
    if not path.exists():
        raise DataError("stress set not found", path)
    if not mp.is_file():
        raise DataError(f"not a stress set: no {MANIFEST} (make one with `edgecxr data stress`)", path)
    try:
        m = json.loads(mp.read_text())
    except Exception as e:
        raise DataError(f"stress manifest is not valid JSON ({e.__class__.__name__})", mp) from None
    if not isinstance(m, dict) or m.get("kind") != KIND:
        kind = m.get("kind") if isinstance(m, dict) else None
        raise DataError(f"not a stress set manifest (kind {kind!r}, expected {KIND!r})", mp)
    if m.get("schema") != SCHEMA:
        raise DataError(f"unsupported stress set schema {m.get('schema')!r} (this edgecxr reads {SCHEMA})", mp)
    for key in ("recipe", "groups", "items"):
        if key not in m:
            raise DataError(f"stress manifest has no {key!r}", mp)
    if m["recipe"].get("version") != RECIPE_VERSION:
        raise DataError(f"stress recipe version {m['recipe'].get('version')!r} is not {RECIPE_VERSION}", mp)
    if verify:
        for it in m["items"]:
            f = folder / it["path"]
            if not f.is_file():
                raise DataError("stress image missing", f)
            if sha256_file(f) != it["sha256"]:
                raise DataError("stress image does not match its sha256 in the manifest", f)
    return m
