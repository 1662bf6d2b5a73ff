"""The one benchmark runner, shared by every backend (device side, no torch).

The runner owns everything that must be identical across boards: which
images, in which order, preprocessing, warm-up, timing, percentiles, memory,
accuracy and the result record.  A backend only loads a model file and turns a
preprocessed batch into logits.  Methodology: benchmarks/README.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr import __version__
from edgecxr.device.backends import open_backend
from edgecxr.device.backends.base import Subject  # noqa: F401  (re-exported: bench.Subject is public)
from edgecxr.device.bundle import Bundle, IOSpec, verify
from edgecxr.shared.errors import DataError, EdgeCXRError
from edgecxr.shared.fsutil import atomic_append_line, portable_path, read_lines, sha256_file
from edgecxr.shared.metrics import binary_metrics, delong_paired, expected_calibration_error, softmax_pos, summarize
from edgecxr.shared.sysinfo import default_device_name, device_facts, reset_peak_rss, rss_mb

RECORD_SCHEMA = 1


@dataclass
class BenchConfig:
    warmup: int = 10
    iterations: int = 100  # fixed count, or the minimum when a time budget is set
    time_budget_s: float = 0.0  # > 0: keep timing until the budget is spent
    batch: int = 1
    extra_batch: int = 0  # > 1: also time this batch size (throughput)
    threads: int | None = None  # None: the profile's threads, capped at this machine's cores
    max_images: int = 0  # 0 = all evaluation images
    accuracy: bool = True
    latency: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # backend option overrides
    floor: bool = False  # also measure this machine's compute floor (edgecxr.device.floor, about 2 s)


def subject_from_bundle(path: str | Path) -> Subject:
    b: Bundle = verify(path)
    m = b.manifest
    prof = m.get("target_profile") or {}
    return Subject(
        name=m.get("name", b.name), target=m["target"], backend=m["backend"], precision=m["precision"],
        preprocess=b.preprocess, threshold=b.threshold, model_bytes=b.model_bytes(), reference=b.reference(),
        open=lambda threads, opts: open_backend(b, threads, opts),
        meta={"bundle": str(path), "manifest_sha256": sha256_file(Path(path) / "manifest.json"),
              "source_checkpoint_sha256": (m.get("source") or {}).get("checkpoint_sha256"),
              "calibration_sha256": (m.get("calibration") or {}).get("sha256"),
              "flops": (m.get("compute") or {}).get("flops"),
              "export_check": {k: v for k, v in (m.get("export_check") or {}).items() if k != "runtime"}},
        default_threads=prof.get("threads"), data_hint=(m.get("reference") or {}).get("data"),
    )


def _encode_time(spec: IOSpec, x: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    e = spec.encode(x)
    return e, (time.perf_counter() - t) * 1000


def load_images(subject: Subject, data: str | Path | None, max_images: int, log) -> dict[str, Any]:
    """Evaluation images in a fixed order (sorted by relative path), preprocessed, with timings."""
    from edgecxr.shared.data import SplitManifest, load_preprocessed, scan

    if data is None:
        hint = subject.data_hint or {}
        if hint.get("data") and Path(hint["data"]).exists():
            data = hint["data"]
        elif hint.get("split") and Path(hint["split"]).exists():
            sm = SplitManifest.read(hint["split"])
            items, root, skipped = sm.subset("val"), sm.root, []
            source = f"validation split of {portable_path(hint['split'])}"
            data = None
        else:
            where = hint.get("data") or hint.get("split") or "unknown"
            raise DataError(f"the bundle's reference images ({where}) are not on this machine; pass --data DIR")
    if data is not None:
        ds = scan(data)
        items, root, skipped = ds.items, ds.root, ds.skipped
        source = portable_path(data) + (f" ({ds.notes[-1]})" if ds.kind == "npz" and ds.notes else "")
    items = sorted(items, key=lambda it: it.path)
    if max_images and max_images < len(items):
        # keep both classes: stratified, deterministic
        pos = [it for it in items if it.label == 1]
        neg = [it for it in items if it.label == 0]
        k = max(1, round(max_images * len(pos) / len(items)))
        items = sorted(pos[:k] + neg[:max(1, max_images - k)], key=lambda it: it.path)
    from edgecxr.shared.data import memoised

    def stack():
        pre_ms, xs = [], []
        for it in items:
            x, ms = load_preprocessed(root, it, subject.preprocess)
            xs.append(x)
            pre_ms.append(ms)
        return np.stack(xs).astype(np.float32, copy=False), np.array(pre_ms)

    # inside an image memo (demo, pipeline) every bench and gate of the run shares one stacked array
    x, pre_ms = memoised(("stack", str(root), tuple((it.path, it.sha256) for it in items),
                          json.dumps(subject.preprocess.to_dict(), sort_keys=True)), stack)
    return {"items": items, "x": x, "pre_ms": pre_ms, "source": source, "skipped": [asdict(s) for s in skipped]}


def stats(ms: np.ndarray, batch: int) -> dict[str, float]:
    return {
        "n": int(len(ms)), "batch": batch,
        "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "min": float(ms.min()), "max": float(ms.max()),
        "throughput_ips": float(1000.0 * batch / ms.mean()),
    }


def time_loop(fn: Callable[[], Any], warmup: int, iterations: int, budget_s: float) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = []
    t_end = time.perf_counter() + budget_s
    while len(out) < iterations or (budget_s > 0 and time.perf_counter() < t_end):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return np.array(out)


def _accuracy(subject: Subject, backend, imgs: dict[str, Any], threads: int,
              reference: str | Path | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Accuracy at the subject's threshold and the comparison with the float reference (the
    manifest's probabilities, or the fp32 twin ``reference`` run here on the same images)."""
    from edgecxr.device.backends import infer_all

    x_all = imgs["x"]
    acc = None
    shas = [it.sha256 for it in imgs["items"]]
    logits = infer_all(backend, x_all, (tuple(shas), json.dumps(subject.preprocess.to_dict(), sort_keys=True)))
    prob = softmax_pos(logits)
    if not np.all(np.isfinite(prob)):
        raise EdgeCXRError(f"{subject.name}: the model produced non-finite outputs")
    y = np.array([it.label for it in imgs["items"]])
    if len(set(y.tolist())) == 2 and subject.threshold is not None:
        acc = summarize(y, prob, subject.threshold)
        acc["ece"] = expected_calibration_error(y, prob)
    paths = [it.path for it in imgs["items"]]
    paired = pair_with_reference(subject, shas, y, prob, paths)
    if reference is not None:
        from edgecxr.device.paired import check_twins, compare, run_probs

        check_twins(subject.meta["bundle"], reference)
        p_twin = run_probs(reference, x_all, threads)
        twin = compare(y, p_twin, prob, subject.threshold if subject.threshold is not None else 0.5, paths)
        twin["reference_bundle"] = Path(reference).name
        twin["reference_manifest_sha256"] = sha256_file(Path(reference) / "manifest.json")
        twin.update({"float_probs": p_twin.round(6).tolist(), "probs": prob.round(6).tolist(), "labels": y.tolist()})
        if not paired or not paired.get("matched") or paired.get("unmatched"):
            paired = {**twin, "matched": len(y), "unmatched": 0, "against": "fp32 twin bundle"}
        else:
            paired["fp32_twin"] = {k: v for k, v in twin.items() if k not in ("float_probs", "probs", "labels")}
    return acc, paired


def _latency(backend, x_all: np.ndarray, cfg: BenchConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Latency at batch 1 (or ``cfg.batch``) on one fixed real image, and at ``cfg.extra_batch``."""
    xb = np.repeat(x_all[:1], cfg.batch, axis=0)
    enc = backend.input_spec.encode(xb)
    latency = stats(time_loop(lambda: backend.run_raw(enc), cfg.warmup, cfg.iterations, cfg.time_budget_s), cfg.batch)
    extra = None
    if cfg.extra_batch and cfg.extra_batch > 1:
        xe = backend.input_spec.encode(np.resize(x_all, (cfg.extra_batch,) + x_all.shape[1:]))
        extra = stats(time_loop(lambda: backend.run_raw(xe), max(2, cfg.warmup // 2),
                                max(10, cfg.iterations // 4), 0.0), cfg.extra_batch)
        backend.run_raw(enc)  # back to batch 1 shapes
    return latency, extra


def run(subject: Subject, data: str | Path | None = None, cfg: BenchConfig | None = None,
        device: str | None = None, log=print, reference: str | Path | None = None) -> dict[str, Any]:
    """Benchmark one subject; return the result record (not yet stored).

    ``reference``: an fp32 twin bundle (same checkpoint) run on the same images, for paired
    validation on images the bundle's manifest has no float reference for (a site's own set).
    """
    import os

    cfg = cfg or BenchConfig()
    threads = cfg.threads or min(subject.default_threads or os.cpu_count() or 1, os.cpu_count() or 1)
    imgs = None
    if cfg.accuracy:
        imgs = load_images(subject, data, cfg.max_images, log)
        x_all = imgs["x"]
    else:
        from edgecxr.shared.preprocess import normalize

        x_all = normalize(np.full((subject.preprocess.size,) * 2, 0.5, np.float32), subject.preprocess)[None]
    # cold start: construct + load/compile + first inference
    rss0 = rss_mb().get("VmRSS", 0.0)
    peak_reset = reset_peak_rss()
    t = time.perf_counter()
    backend = subject.open(threads, cfg.options)
    load_ms = (time.perf_counter() - t) * 1000
    x1, enc_ms = _encode_time(backend.input_spec, x_all[:1])
    t = time.perf_counter()
    backend.run_raw(x1)
    first_ms = (time.perf_counter() - t) * 1000
    acc = paired = None
    if cfg.accuracy and imgs is not None:
        acc, paired = _accuracy(subject, backend, imgs, threads, reference)
    latency, extra = _latency(backend, x_all, cfg) if cfg.latency else (None, None)
    mem = rss_mb()
    info = backend.info().to_dict()
    facts = device_facts()
    record = {
        "schema": RECORD_SCHEMA, "kind": "edgecxr-bench",
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgecxr": __version__,
        "device": device or default_device_name(), "device_facts": facts,
        "subject": {"name": subject.name, "target": subject.target, "backend": subject.backend,
                    "precision": subject.precision, "model_bytes": subject.model_bytes, **_travel(subject.meta)},
        "runtime": info,
        "config": {**asdict(cfg), "threads": threads, "options": cfg.options},
        "latency_ms": latency, "batch_latency_ms": extra,
        "cold_start_ms": {"load": load_ms, "first_inference": first_ms, "total": load_ms + first_ms},
        "preprocess_ms": ({**_pstats(imgs["pre_ms"]), "encode_batch1": enc_ms,
                           "what": "decode + grey + resize + normalise per image; encode = layout/int8 quantisation"}
                          if imgs is not None else None),
        "memory_mb": {"rss_before_load": rss0, "rss_after": mem.get("VmRSS"),
                      "peak_rss": mem.get("VmHWM"), "peak_reset_before_load": peak_reset,
                      "peak_minus_before": (mem.get("VmHWM", 0) - rss0) if peak_reset else None},
        "data": ({"source": imgs["source"], "n": int(len(imgs["items"])), "skipped": imgs["skipped"],
                  "order": "sorted by relative path"} if imgs is not None else None),
        "accuracy": acc, "vs_float": paired,
    }
    if cfg.floor and cfg.latency:
        from edgecxr.device.floor import measure

        record["compute_floor"] = measure(threads, facts["int8_isa"])
    return record


def _travel(meta: dict[str, Any]) -> dict[str, Any]:
    """Records name bundles, not folders on one machine: a bundle by its folder name (it is also in
    the manifest), a checkpoint by a portable path."""
    out = dict(meta)
    if "bundle" in out:
        out["bundle"] = Path(out["bundle"]).name
    if "checkpoint" in out:
        out["checkpoint"] = portable_path(out["checkpoint"])
    return out


def _pstats(ms: np.ndarray) -> dict[str, float]:
    return {"n": int(len(ms)), "p50": float(np.percentile(ms, 50)), "mean": float(ms.mean()),
            "p90": float(np.percentile(ms, 90))}


def pair_with_reference(subject: Subject, shas: list[str], y: np.ndarray, prob: np.ndarray,
                        paths: list[str] | None = None) -> dict[str, Any] | None:
    """AUC drop against the float model on the identical images, paired by sha256."""
    ref = subject.reference
    if not ref:
        return None
    idx = [i for i, s in enumerate(shas) if s in ref]
    if not idx:
        return {"matched": 0, "note": "no evaluation image matches the bundle's float reference (by sha256)"}
    yy = y[idx]
    p = prob[idx]
    pr = np.array([ref[shas[i]]["prob"] for i in idx])
    ref_labels = np.array([ref[shas[i]]["label"] for i in idx])
    out: dict[str, Any] = {"matched": len(idx), "unmatched": len(shas) - len(idx),
                           "label_mismatch": int((ref_labels != yy).sum())}
    if len(set(yy.tolist())) < 2:
        out["note"] = "matched images are single-class: no AUC"
        return out
    d = delong_paired(yy, pr, p)
    thr = subject.threshold if subject.threshold is not None else 0.5
    out.update({
        "auc_float": d.auc_a, "auc": d.auc_b, "auc_drop": d.diff, "auc_drop_ci95": [d.ci_lo, d.ci_hi],
        "delong_z": d.z, "delong_p": d.p_value,
        "label_agreement": float(np.mean((pr >= thr) == (p >= thr))),
        "accuracy_float": binary_metrics(yy, pr, thr).accuracy, "accuracy": binary_metrics(yy, p, thr).accuracy,
        "mean_abs_prob_diff": float(np.abs(pr - p).mean()), "max_abs_prob_diff": float(np.abs(pr - p).max()),
        "float_probs": pr.round(6).tolist(), "probs": p.round(6).tolist(), "labels": yy.tolist(),
        "flipped": [paths[idx[i]] if paths else shas[idx[i]] for i in np.nonzero((pr >= thr) != (p >= thr))[0]],
    })
    return out


def store(record: dict[str, Any], results_dir: str | Path = "benchmarks/results") -> Path:
    """Append one record to results/<device>.jsonl atomically."""
    import re

    dev = re.sub(r"[^A-Za-z0-9._-]+", "-", record["device"]).strip("-") or "device"
    path = Path(results_dir) / f"{dev}.jsonl"
    atomic_append_line(path, json.dumps(record, separators=(",", ":")))
    return path


def read_results(results_dir: str | Path = "benchmarks/results") -> list[dict[str, Any]]:
    out = []
    for p in sorted(Path(results_dir).glob("*.jsonl")):
        for n, line in enumerate(read_lines(p), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"line {n} is not valid JSON", p) from None
            if rec.get("kind") == "edgecxr-bench" and rec.get("schema") == RECORD_SCHEMA:
                out.append(rec)
    return out
