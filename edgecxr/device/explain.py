"""Where the model looks, on the board: occlusion sensitivity through the bundle's own runtime.

Device side: numpy and Pillow only, no torch. The method needs nothing but forward passes, so it
works the same for every backend and precision (LiteRT, OpenVINO, ONNX Runtime; int8 or fp32):
a square window filled with the image's mean slides over the preprocessed input on a grid,
every occluded copy goes through the runtime in batches, and each pixel's heat is the mean drop
in the model's log-odds of pneumonia (logit[PNEUMONIA] - logit[NORMAL]) over the windows that
covered it. Log-odds rather than probability: a confident model's probability saturates near 1,
and a saturated output would hide which regions it uses.

The heat is signed: positive where hiding the region lowers the pneumonia score (evidence for
PNEUMONIA), negative where it raises it (evidence for NORMAL). The picture shows the evidence
for the label the bundle called at its threshold; comparisons (int8 against its fp32 twin)
use the signed map, which does not depend on the call.

Because preprocessing squashes the whole radiograph to size x size, the map is resized back
to the original height and width: the overlay keeps the original aspect ratio.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.shared.errors import EdgeCXRError, ImageReadError
from edgecxr.shared.imageio import is_candidate, load_grey
from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

# Coarser grids the time budget may fall back to (window positions per side = grid - window + 1).
_FALLBACK_GRIDS = (14, 12, 10, 8, 7, 6, 5, 4, 3)
DISPLAY_MAX_SIDE = 640
DISPLAY_MIN_SIDE = 448  # small inputs (224 px datasets) are enlarged so the caption fits


@dataclass(frozen=True)
class OcclusionConfig:
    grid: int = 14  # strides per side: stride = size / grid
    window: int = 2  # window side, in strides (2: every pixel is covered by up to 4 windows)
    batch: int = 16  # occluded copies per runtime call (the last call is padded to keep one shape)
    budget_s: float = 0.0  # seconds per image; the grid is coarsened to fit (0 = no limit)
    fill: str = "mean"  # what a window shows: the image's mean, or the image blurred (detail removed, brightness kept)

    def __post_init__(self) -> None:
        if self.fill not in ("mean", "blur"):
            raise EdgeCXRError(f"--fill {self.fill!r}: known: mean, blur")
        if self.window < 1:
            raise EdgeCXRError(f"--window {self.window}: must be at least 1 stride")
        if self.grid < self.window + 1:
            raise EdgeCXRError(f"--grid {self.grid}: must exceed the window ({self.window} strides)")
        if self.batch < 1:
            raise EdgeCXRError(f"--batch {self.batch}: must be at least 1")
        if self.budget_s < 0:
            raise EdgeCXRError(f"--budget {self.budget_s}: must be 0 (no limit) or positive")


def windows(size: int, grid: int, window: int) -> tuple[int, np.ndarray]:
    """Window side in pixels and the start offsets along one axis (the last window touches the edge)."""
    w = max(1, int(round(window * size / grid)))
    n = grid - window + 1
    starts = np.unique(np.round(np.linspace(0, size - w, n)).astype(int))
    return w, starts


def box_blur(x: np.ndarray, r: int, passes: int = 3) -> np.ndarray:
    """C x H x W blurred by ``passes`` box filters of side 2r+1 (close to a Gaussian), edges repeated."""
    y = np.asarray(x, np.float64)
    for _ in range(passes):
        for ax in (1, 2):
            pad = [(0, 0)] * 3
            pad[ax] = (r + 1, r)
            c = np.cumsum(np.pad(y, pad, mode="edge"), axis=ax)
            hi = np.take(c, np.arange(2 * r + 1, c.shape[ax]), axis=ax)
            lo = np.take(c, np.arange(0, c.shape[ax] - 2 * r - 1), axis=ax)
            y = (hi - lo) / (2 * r + 1)
    return y.astype(np.float32)


def n_forwards(size: int, grid: int, window: int) -> int:
    return len(windows(size, grid, window)[1]) ** 2 + 1


def log_odds(logits: np.ndarray) -> np.ndarray:
    lg = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    return lg[:, 1] - lg[:, 0]


@dataclass
class Heat:
    """One occlusion map in model-input coordinates (size x size) and how it was made."""

    heat: np.ndarray  # signed: positive where the region supports PNEUMONIA
    score: float  # log-odds of pneumonia for the unoccluded image
    grid: int | None
    window_px: int | None
    forwards: int | None
    seconds: float
    method: str = "occlusion"


class Occluder:
    """Occlusion sensitivity through any callable ``infer(NCHW float) -> N x 2 logits``."""

    name = "occlusion"

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], pp: PreprocessConfig,
                 cfg: OcclusionConfig | None = None):
        self.infer = infer
        self.pp = pp
        self.cfg = cfg or OcclusionConfig()
        self.sec_per_forward: float | None = None

    def warm_up(self) -> None:
        """One batch of the chosen shape (first calls allocate and compile), then a timed one."""
        x = np.zeros((self.cfg.batch, self.pp.channels, self.pp.size, self.pp.size), np.float32)
        self.infer(x)
        t = time.perf_counter()
        self.infer(x)
        self.sec_per_forward = (time.perf_counter() - t) / self.cfg.batch

    def choose_grid(self) -> int:
        c = self.cfg
        if c.budget_s <= 0 or self.sec_per_forward is None:
            return c.grid
        for g in [c.grid] + [g for g in _FALLBACK_GRIDS if g < c.grid]:
            if g <= c.window:
                break
            n = n_forwards(self.pp.size, g, c.window)
            if -(-n // c.batch) * c.batch * self.sec_per_forward <= c.budget_s:
                return g
        return max(c.window + 1, min(g for g in _FALLBACK_GRIDS if g > c.window))

    def explain(self, x: np.ndarray) -> Heat:
        """``x``: one preprocessed C x H x W image."""
        c, s = self.cfg, self.pp.size
        t0 = time.perf_counter()
        grid = self.choose_grid()
        w, starts = windows(s, grid, c.window)
        boxes = [(y, x0) for y in starts for x0 in starts]
        if c.fill == "blur":
            fill = box_blur(x, max(1, w // 2))
        else:
            fill = np.broadcast_to(x.reshape(x.shape[0], -1).mean(axis=1).astype(np.float32)[:, None, None], x.shape)
        copies = [None] + boxes  # None: the unoccluded image
        scores = np.empty(len(copies), np.float64)
        buf = np.empty((c.batch, *x.shape), np.float32)
        for i in range(0, len(copies), c.batch):
            chunk = copies[i:i + c.batch]
            for j in range(c.batch):
                buf[j] = x
                box = chunk[j] if j < len(chunk) else None
                if box is not None:
                    y0, x0 = box
                    buf[j, :, y0:y0 + w, x0:x0 + w] = fill[:, y0:y0 + w, x0:x0 + w]
            scores[i:i + len(chunk)] = log_odds(self.infer(buf))[:len(chunk)]
        base = float(scores[0])
        acc = np.zeros((s, s), np.float64)
        cnt = np.zeros((s, s), np.float64)
        for (y0, x0), sc in zip(boxes, scores[1:], strict=True):
            acc[y0:y0 + w, x0:x0 + w] += base - sc
            cnt[y0:y0 + w, x0:x0 + w] += 1
        heat = (acc / np.maximum(cnt, 1)).astype(np.float32)
        dt = time.perf_counter() - t0
        per = dt / (-(-len(copies) // c.batch) * c.batch)
        self.sec_per_forward = per if self.sec_per_forward is None else 0.5 * (self.sec_per_forward + per)
        return Heat(heat, base, grid, w, len(copies), dt)


# ------------------------------------------------------------------ pictures
_JET = np.array([[0.0, 0.0, 0.5], [0.0, 0.3, 1.0], [0.0, 0.9, 0.9], [0.6, 1.0, 0.3],
                 [1.0, 0.85, 0.0], [1.0, 0.35, 0.0], [0.75, 0.0, 0.0]], np.float32)


def colormap(v: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB [0, 1], a jet-like ramp (dark blue, cyan, yellow, dark red) by linear interpolation."""
    v = np.clip(np.asarray(v, np.float32), 0, 1) * (len(_JET) - 1)
    i = np.minimum(v.astype(int), len(_JET) - 2)
    f = (v - i)[..., None]
    return _JET[i] * (1 - f) + _JET[i + 1] * f


def resize_float(a: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(a, np.float32)).resize((width, height), Image.Resampling.BILINEAR),
                      dtype=np.float32)


def evidence(heat: np.ndarray, positive: bool) -> np.ndarray:
    """The part of a signed map that supports the call, scaled to [0, 1] by its maximum."""
    e = np.clip(heat if positive else -heat, 0, None)
    m = float(e.max())
    return e / m if m > 0 else e


def central_share(heat: np.ndarray, positive: bool, margin: float = 0.2) -> float:
    """Share of the call's evidence inside the central box (``margin`` of each side left out: the central
    60% x 60%, 36% of the area), in model-input coordinates. Low values: the model leans on borders,
    corners or text markers."""
    e = evidence(heat, positive)
    n = heat.shape[0]
    a = int(round(margin * n))
    t = float(e.sum())
    return float(e[a:n - a, a:n - a].sum() / t) if t > 0 else float("nan")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render(grey: np.ndarray, heat: np.ndarray, positive: bool, lines: Sequence[str], headline: str,
           max_side: int = DISPLAY_MAX_SIDE, method: str = "occlusion", cells: int | None = None):
    """The radiograph at its own aspect ratio with the evidence map over it, and a caption band below.

    ``cells``: the map's own resolution (occlusion: one cell per grid step); it is averaged to that
    many cells per side and interpolated from there, so the picture shows no block edges the
    method did not measure. The saved .npy map is left as computed."""
    from PIL import Image, ImageDraw

    h, w = grey.shape
    k = min(1.0, max_side / max(h, w)) if max(h, w) >= DISPLAY_MIN_SIDE else DISPLAY_MIN_SIDE / max(h, w)
    dw, dh = max(1, round(w * k)), max(1, round(h * k))
    g = resize_float(grey, dw, dh) if (dw, dh) != (w, h) else np.asarray(grey, np.float32)
    ev = evidence(heat, positive)
    if cells and cells < ev.shape[0]:
        ev = np.asarray(Image.fromarray(ev.astype(np.float32)).resize((cells, cells), Image.Resampling.BOX), np.float32)
    ev = np.clip(resize_float(ev, dw, dh), 0, 1)
    alpha = (0.6 * ev ** 0.7)[..., None]
    rgb = np.repeat(np.clip(g, 0, 1)[..., None], 3, axis=2) * (1 - alpha) + colormap(ev) * alpha
    img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8), "RGB")

    fs = max(12, min(18, dw // 30))
    font, small = _font(fs), _font(max(10, fs - 3))
    band = int(fs * 1.5) + int((fs - 1) * 1.4) * len(lines) + fs + 8
    out = Image.new("RGB", (dw, dh + band), (20, 20, 20))
    out.paste(img, (0, 0))
    d = ImageDraw.Draw(out)
    d.text((6, dh + 4), headline, fill=(255, 110, 90) if positive else (120, 220, 130), font=font)
    y = dh + 4 + int(fs * 1.5)
    for ln in lines:
        d.text((6, y), ln, fill=(220, 220, 220), font=small)
        y += int((fs - 1) * 1.4)
    # colour bar: what the colours mean
    bw = max(40, min(160, dw // 3))
    bar = (colormap(np.linspace(0, 1, bw))[None].repeat(max(6, fs // 2), axis=0) * 255).astype(np.uint8)
    x0 = 6
    out.paste(Image.fromarray(bar, "RGB"), (x0, y + 2))
    d.text((x0 + bw + 6, y - 1), f"{method}: evidence for {'PNEUMONIA' if positive else 'NORMAL'} (low to high)",
           fill=(200, 200, 200), font=small)
    return out


def png_bytes(im) -> bytes:
    import io

    b = io.BytesIO()
    im.save(b, format="PNG", compress_level=4)
    return b.getvalue()


# ------------------------------------------------------------------ files
def expand_images(paths: Sequence[str | Path], max_images: int = 0) -> list[Path]:
    """Files as given; folders expanded (recursively, sorted) to their image/DICOM files.

    ``max_images`` keeps that many, evenly spaced over the sorted list (so both class folders of a
    labelled set are represented)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_candidate(f)))
        else:
            out.append(p)
    if max_images and len(out) > max_images:
        idx = np.unique(np.linspace(0, len(out) - 1, max_images).round().astype(int))
        out = [out[i] for i in idx]
    return out


def output_names(files: Sequence[Path]) -> list[str]:
    """A unique, readable output stem per input (``scan.dcm`` and ``scan.png`` stay apart)."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        base = f"{f.stem}_{f.suffix.lstrip('.').lower()}" if f.suffix else f.name
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base)
        k = seen.get(base, 0)
        seen[base] = k + 1
        names.append(base if k == 0 else f"{base}-{k + 1}")
    return names


@dataclass
class Explained:
    """One image's explanation record (also what `predict --explain` prints)."""

    file: str
    prob: float
    threshold: float
    label: str
    bundle: str
    png: str
    heat: str
    seconds: float
    method: str = "occlusion"
    grid: int | None = None
    window_px: int | None = None
    forwards: int | None = None
    score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return {k: v for k, v in d.items() if v is not None}


def headline_for(label: str, prob: float, threshold: float) -> str:
    return f"{label}   p(pneumonia) = {prob:.3f}   threshold {threshold:.3f}"


def html_page(title: str, cards: list[dict[str, Any]], note: str = "") -> str:
    """One static page; each card: ``images`` (list of (png name, caption)), ``title``, ``lines``."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;background:#111;color:#ddd;margin:16px}"
             ".grid{display:flex;flex-wrap:wrap;gap:14px}"
             ".card{background:#1d1d1d;padding:8px;border-radius:6px;max-width:100%}"
             ".card.flag{outline:3px solid #e0a020}"
             ".pair{display:flex;gap:6px}"
             "figure{margin:0}img{max-width:420px;width:100%;display:block}"
             "figcaption,.meta{font-size:13px;margin-top:4px}h1{font-size:20px}"
             "</style></head><body>", f"<h1>{e(title)}</h1>"]
    if note:
        parts.append(f"<p>{e(note)}</p>")
    parts.append("<div class='grid'>")
    for c in cards:
        parts.append(f"<div class='card{' flag' if c.get('flag') else ''}'><div class='meta'><b>{e(c['title'])}</b></div>"
                     "<div class='pair'>")
        for src, cap in c["images"]:
            parts.append(f"<figure><a href='{e(src)}'><img src='{e(src)}' alt='{e(cap)}'></a>"
                         f"<figcaption>{e(cap)}</figcaption></figure>")
        parts.append("</div>")
        for ln in c.get("lines", []):
            parts.append(f"<div class='meta'>{e(ln)}</div>")
        parts.append("</div>")
    parts.append("</div></body></html>\n")
    return "".join(parts)


# ------------------------------------------------------------------ the board's command
@dataclass
class Model:
    """What explain needs from a bundle (or a host checkpoint): a name, preprocessing, threshold, labels, infer."""

    name: str
    pp: PreprocessConfig
    threshold: float
    labels: list[str]
    infer: Callable[[np.ndarray], np.ndarray]
    backend: str
    precision: str


def open_bundle_model(bundle: str | Path, threads: int | None = None) -> Model:
    from edgecxr.device.backends import open_backend
    from edgecxr.device.bundle import verify

    b = verify(bundle)
    be = open_backend(b, threads)
    return Model(b.name, b.preprocess, b.threshold, list(b.manifest["labels"]), be.infer,
                 b.manifest["backend"], b.manifest["precision"])


def describe(model: Model, hm: Heat, cfg: OcclusionConfig | None) -> str:
    what = f"{model.name}: {model.backend} {model.precision}   "
    if hm.method == "occlusion" and cfg is not None:
        n = len(windows(model.pp.size, hm.grid, cfg.window)[1])
        return what + f"occlusion {n}x{n} windows of {hm.window_px}/{model.pp.size} px, {hm.forwards} passes"
    return what + hm.method


def explain_files(model: Model, method: Any, files: Sequence[Path], names: Sequence[str],
                  write: Callable[[str, bytes], None], log: Callable[[str], None] | None = None,
                  cfg: OcclusionConfig | None = None) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Heatmaps for ``files`` with ``method.explain(x) -> Heat``; each overlay PNG and raw map (.npy)
    handed to ``write``. Returns the records (bad files as ``{"file", "error"}``) and the signed maps."""
    import io

    rows: list[dict[str, Any]] = []
    maps: dict[str, np.ndarray] = {}
    for f, name in zip(files, names, strict=True):
        try:
            grey = load_grey(f)
        except ImageReadError as e:
            rows.append({"file": str(f), "error": e.message})
            if log:
                log(f"{f}: error: {e.message}")
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        x = preprocess_grey(grey, model.pp)
        hm = method.explain(x)
        prob = float(1.0 / (1.0 + np.exp(-hm.score)))
        pos = prob >= model.threshold
        label = model.labels[int(pos)]
        lines = [f"{f.name}   ({grey.shape[1]} x {grey.shape[0]} px)", describe(model, hm, cfg)]
        im = render(grey, hm.heat, pos, lines, headline_for(label, prob, model.threshold), method=hm.method,
                    cells=hm.grid)
        data = png_bytes(im)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        buf = io.BytesIO()
        np.save(buf, hm.heat)
        write(f"{name}.png", data)
        write(f"{name}.heat.npy", buf.getvalue())
        maps[name] = hm.heat
        rows.append(Explained(str(f), prob, model.threshold, label, model.name, f"{name}.png", f"{name}.heat.npy",
                              round(dt, 4), hm.method, hm.grid, hm.window_px, hm.forwards, hm.score,
                              {"method_seconds": round(hm.seconds, 4), "cpu_seconds": round(cpu, 4),
                               "central_share": round(central_share(hm.heat, pos), 4)}).to_dict())
        if log:
            log(f"{f}: {label}  p(pneumonia)={prob:.4f}  threshold {model.threshold:.4f}  "
                f"heatmap {name}.png in {dt:.2f} s")
    return rows, maps


def _cards(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cards = []
    for r in rows:
        if r.get("error"):
            cards.append({"title": r["file"], "images": [], "lines": [f"skipped: {r['error']}"]})
            continue
        cards.append({"title": Path(r["file"]).name,
                      "images": [(r["png"], f"{r['label']}  p={r['prob']:.3f}  thr {r['threshold']:.3f}")],
                      "lines": [f"{r['seconds']:.2f} s"]})
    return cards


def check_out(out: str | Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgeCXRError("--out exists and is not a folder", out)
    if out.exists() and any(out.iterdir()) and not force:
        raise EdgeCXRError("output folder exists and is not empty (earlier heatmaps); use --force to replace it", out)
    return out


def run_explain(bundle: str | Path, images: Sequence[str | Path], out: str | Path, cfg: OcclusionConfig,
                threads: int | None = None, force: bool = False, max_images: int = 0,
                compare: str | Path | None = None, min_corr: float = 0.5,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`edgecxr explain BUNDLE ...` and `predict --explain`: occlusion through the bundle's runtime
    (and, with ``compare``, through its fp32 twin's on the same images and grid)."""
    out = check_out(out, force)
    files = expand_images(images, max_images)
    if not files:
        raise EdgeCXRError("no images given (files, or folders holding .jpeg/.png/.dcm)")
    model = open_bundle_model(bundle, threads)
    occ = Occluder(model.infer, model.pp, cfg)
    occ.warm_up()
    twin = twin_occ = None
    if compare is not None:
        twin = open_bundle_model(compare, threads)
        if twin.pp != model.pp:
            raise EdgeCXRError("--compare bundle preprocesses differently (not a twin of this bundle)", compare)
        if cfg.budget_s:
            raise EdgeCXRError("--budget and --compare together would let the two bundles use different grids; "
                               "give --grid instead")
        twin_occ = Occluder(twin.infer, twin.pp, cfg)
        twin_occ.warm_up()
    title = f"edgecxr explain: {model.name} ({model.backend} {model.precision}), occlusion"
    return explain_to_folder(model, occ, files, out, title, cfg=cfg, twin=twin, twin_method=twin_occ,
                             min_corr=min_corr, log=log)


def explain_to_folder(model: Model, method: Any, files: Sequence[Path], out: Path, title: str,
                      cfg: OcclusionConfig | None = None, twin: Model | None = None, twin_method: Any = None,
                      min_corr: float = 0.5, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every picture, raw map, index.html and explain.json are built in a temporary folder and moved
    into ``out`` at the end: an interrupted run leaves nothing half-written and an earlier ``out`` intact."""
    from edgecxr.shared.fsutil import atomic_dir, atomic_write_json

    names = output_names(files)
    with atomic_dir(out, force=True) as tmp:
        def write(name: str, data: bytes) -> None:
            (tmp / name).write_bytes(data)

        rows, maps = explain_files(model, method, files, names, write, log, cfg)
        summary: dict[str, Any] = {"model": model.name, "backend": model.backend, "precision": model.precision,
                                   "method": getattr(method, "name", "occlusion"),
                                   "config": asdict(cfg) if cfg is not None else None}
        ok = [r for r in rows if not r.get("error")]
        if ok:
            summary["seconds_per_image"] = float(np.mean([r["seconds"] for r in ok]))
            summary["central_share_median"] = {
                lab: float(np.nanmedian([r["central_share"] for r in ok if r["label"] == lab]))
                for lab in model.labels if any(r["label"] == lab for r in ok)}
        if twin is not None:
            from edgecxr.device.explain_compare import compare_rows

            twin_dir = tmp / "reference"
            twin_dir.mkdir()

            def write_twin(name: str, data: bytes) -> None:
                (twin_dir / name).write_bytes(data)

            good = [(f, n) for f, n, r in zip(files, names, rows, strict=True) if not r.get("error")]
            tlog = (lambda m: log(f"  reference {twin.name}: {m}")) if log else None
            trows, tmaps = explain_files(twin, twin_method, [f for f, _ in good], [n for _, n in good], write_twin,
                                         tlog, cfg)
            for r in trows:
                r["png"] = f"reference/{r['png']}"
                r["heat"] = f"reference/{r['heat']}"
            cmp = compare_rows(rows, trows, maps, tmaps, min_corr)
            summary.update(cmp["summary"])
            summary["reference"] = {"model": twin.name, "backend": twin.backend, "precision": twin.precision,
                                    "rows": trows}
            summary["pairs"] = cmp["pairs"]
            (tmp / "index.html").write_text(html_page(f"{title} against {twin.name}", cmp["cards"], cmp["note"]))
            (tmp / "compare.md").write_text(cmp["markdown"])
        else:
            (tmp / "index.html").write_text(html_page(title, _cards(rows)))
        summary["rows"] = rows
        atomic_write_json(tmp / "explain.json", summary)
    summary["out"] = str(out)
    return summary


def explain_on_board(bundle: Path, files: Sequence[Path], store: Path, params: Any,
                     threads: int | None = None) -> list[dict[str, Any]]:
    """The board's half of `remote predict --explain`: heatmaps into ``store/explain/<bundle>/``
    (the previous request's replaced), rows whose ``png`` is that file's name relative to ``store``."""
    known = ("grid", "window", "batch", "budget_s")
    opts = {k: params[k] for k in known if isinstance(params, dict) and k in params}
    bad = [k for k in (params if isinstance(params, dict) else {}) if k not in known]
    if bad:
        raise EdgeCXRError(f"params.explain: unknown option(s) {', '.join(map(str, bad))} (known: {', '.join(known)})")
    cfg = OcclusionConfig(**opts)
    rel = Path("explain") / Path(bundle).name
    s = run_explain(bundle, files, store / rel, cfg, threads=threads, force=True)
    for r in s["rows"]:
        for k in ("png", "heat"):
            if r.get(k):
                r[k] = (rel / r[k]).as_posix()
    return s["rows"]


def pulled_page(rows: list[dict[str, Any]], out: Path, pngs: dict[str, bytes], title: str) -> None:
    """The host's half: the pulled PNGs, index.html and explain.json, written into ``out`` in one move."""
    from edgecxr.shared.fsutil import atomic_dir, atomic_write_json

    with atomic_dir(out, force=True) as tmp:
        for name, data in pngs.items():
            (tmp / name).write_bytes(data)
        (tmp / "index.html").write_text(html_page(title, _cards(rows)))
        atomic_write_json(tmp / "explain.json", {"rows": rows})
