"""End-to-end workflows behind `edgecxr demo` and `edgecxr pipeline` (host side).

``demo``: the shipped reference model(s) -> int8 and fp32 bundles for every target
-> bench on the shipped evaluation images -> RESULTS.md -> gate -> one table.

``pipeline``: raw images -> split -> calibration set -> train -> prune -> export ->
bench -> report -> gate, with a ``quick`` setting that finishes in minutes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import EdgeCXRError, GateFailure

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("rpi", "nuc", "jetson")


@dataclass
class Model:
    tag: str  # bundle name prefix
    checkpoint: Path
    precisions: tuple[str, ...]


def reference_models(models_dir: Path) -> list[Model]:
    out = []
    ref = models_dir / "mnv2-ref.pt"
    pruned = sorted(models_dir.glob("mnv2-ref-pruned*.pt"))
    if ref.exists():
        out.append(Model("mnv2", ref, ("int8", "fp32")))
    for p in pruned:
        out.append(Model(p.stem.replace("mnv2-ref-", "mnv2-"), p, ("int8", "fp32")))
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    hdr = (f"{'bundle':<36} {'backend':<12} {'prec':<5} {'size MB':>8} {'p50 ms':>8} {'AUC':>7} {'drop':>8} "
           f"{'agree':>6} {'stress worst agree':>24}  verdict")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        lines.append(f"{r['name']:<36} {r['backend']:<12} {r['precision']:<5} {r['size_mb']:>8.2f} "
                     f"{r['p50']:>8.2f} {r['auc']:>7} {r['drop']:>8} {r['agree']:>6} {r.get('stress', '-'):>24}  "
                     f"{r['verdict']}")
    return "\n".join(lines)


def stress_cells(rows) -> dict[str, str]:
    """bundle -> its worst stress corruption's agreement, e.g. 'crop_pad 0.987'."""
    out: dict[str, str] = {}
    for name in {r.bundle for r in rows}:
        st = [r for r in rows if r.bundle == name and r.images.startswith("stress:") and r.agreement == r.agreement]
        if st:
            w = min(st, key=lambda r: r.agreement)
            out[name] = f"{w.images[7:]} {w.agreement:.3f}"
    return out


def verdicts_of(rows) -> dict[str, str]:
    """bundle -> FAIL if any of its rows (reference or a stress corruption) failed, else PASS,
    naming the stress rows that failed as known (``gate --expect-fail``)."""
    failed: dict[str, bool] = {}
    known: dict[str, list[str]] = {}
    for r in rows:
        failed[r.bundle] = failed.get(r.bundle, False) or r.verdict == "FAIL"
        if r.verdict == "KNOWN":
            known.setdefault(r.bundle, []).append(r.images[len("stress:"):])
    return {b: "FAIL" if f else "PASS" + (f" (known: {', '.join(known[b])})" if b in known else "")
            for b, f in failed.items()}


# Stress rows known to fail with the shipped recipes, each tracked by an open issue (the gate still
# shows their numbers). None with the retrained models: LiteRT int8 under heavy quantum noise, the
# one known failure of the first models (agreement 0.964-0.973 in benchmarks/quantization.md),
# passes with them. Keep in step with CI_EXPECT_FAIL in the Makefile.
KNOWN_STRESS_FAILURES: list[str] = []


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def bench_all(bundles: list[Path], eval_dir: Path | None, results: Path, device: str | None, extra: list | None,
              iterations: int, log) -> list[dict[str, Any]]:
    from .bench import BenchConfig, run, store, subject_from_bundle

    recs = []
    subjects = [subject_from_bundle(b) for b in bundles] + list(extra or [])
    for s in subjects:
        cfg = BenchConfig(warmup=10, iterations=iterations, accuracy=not s.name.startswith("baseline-"))
        t = time.time()
        rec = run(s, eval_dir, cfg, device, log=log)
        store(rec, results)
        lat = rec["latency_ms"]
        log(f"  bench {s.name}: p50 {lat['p50']:.2f} ms ({time.time() - t:.0f}s)")
        recs.append(rec)
    return recs


def summarize_rows(recs: list[dict[str, Any]], verdicts: dict[str, str],
                   stress: dict[str, str] | None = None) -> list[dict[str, Any]]:
    rows = []
    for r in recs:
        s, acc, vf = r["subject"], r.get("accuracy") or {}, r.get("vs_float") or {}
        rows.append({"name": s["name"], "backend": s["backend"], "precision": s["precision"],
                     "size_mb": s["model_bytes"] / 1e6, "p50": r["latency_ms"]["p50"],
                     "auc": _fmt(acc.get("auc"), ".4f"), "drop": _fmt(vf.get("auc_drop"), "+.4f"),
                     "agree": _fmt(vf.get("label_agreement"), ".3f"),
                     "verdict": verdicts.get(s["name"], "-" if s["precision"] != "int8" else "?"),
                     "stress": (stress or {}).get(s["name"], "-")})
    return rows


def demo(models_dir: Path = ROOT / "models", eval_dir: Path = ROOT / "data" / "kermany224-val",
         calibration: Path = ROOT / "calibration" / "kermany224", dist: Path = ROOT / "dist",
         results: Path = ROOT / "benchmarks" / "results", report_out: Path = ROOT / "benchmarks" / "RESULTS.md",
         device: str | None = None, iterations: int = 100, baseline: str | None = "densenet121",
         max_auc_drop: float = 0.005, min_agreement: float = 0.98, stress_images: int = 100, log=print) -> int:
    from .backends.torchref import subject_baseline, subject_from_checkpoint
    from .export import export_bundle, load_eval_set
    from .gate import gate
    from .model import read_checkpoint
    from .preprocess import PreprocessConfig
    from .report import report

    t0 = time.time()
    models = reference_models(models_dir)
    if not models:
        raise EdgeCXRError("no reference model (models/mnv2-ref.pt); train one with `edgecxr pipeline`", models_dir)
    if not eval_dir.is_dir():
        raise EdgeCXRError("evaluation images not found", eval_dir)
    bundles: list[Path] = []
    ev = None
    for m in models:
        pp = PreprocessConfig.from_dict(read_checkpoint(m.checkpoint)["preprocess"])
        if ev is None or ev.x.shape[-1] != pp.size:
            ev = load_eval_set(pp, None, eval_dir)
        for t in TARGETS:
            for prec in m.precisions:
                t1 = time.time()
                s = export_bundle(m.checkpoint, t, prec, dist, data=eval_dir, calibration=calibration, force=True,
                                  name=f"{m.tag}-{_tname(t)}-{prec}", log=lambda *_: None, eval_set=ev)
                log(f"  export {Path(s['bundle']).name}: {s['model_bytes'] / 1e6:.2f} MB, AUC drop "
                    f"{s['auc_drop']:+.4f}, agreement {s['label_agreement']:.3f} ({time.time() - t1:.0f}s)")
                bundles.append(Path(s["bundle"]))
    extra = [subject_from_checkpoint(models[0].checkpoint)]
    extra[0].name = f"{models[0].tag}-pytorch-fp32"
    extra[0].data_hint = {"data": str(eval_dir)}
    if baseline:
        extra.append(subject_baseline(baseline, ev.x.shape[-1]))
    recs = bench_all(bundles, eval_dir, results, device, extra, iterations, log)
    out = report(results, report_out)
    log(f"  report: {out}")
    failed = None
    int8 = [b for b in bundles if b.name.endswith("-int8")]
    stress = None
    if stress_images:
        stress = make_demo_stress(eval_dir, dist / f"stress-{stress_images}", stress_images, log)
    t1 = time.time()
    try:
        rows = gate(int8, eval_dir, max_auc_drop, min_agreement, stress=stress,
                    references=[b for b in bundles if b.name.endswith("-fp32")],
                    summary=ROOT / "benchmarks" / "gate-summary.md", details=dist / "gate.json", log=lambda *_: None,
                    expect_fail=KNOWN_STRESS_FAILURES)
    except GateFailure as e:
        failed = e
        rows = e.rows
    log(f"  gate: {len(int8)} int8 bundles on {len(ev.labels)} validation images"
        + (f" and the stress set {stress}" if stress else "") + f" ({time.time() - t1:.0f}s)")
    try:
        from .plots import int8_vs_fp32

        pics = int8_vs_fp32(dist / "gate.json", ROOT / "benchmarks" / "plots")
        log(f"  int8 against fp32 pictures: {', '.join(str(p.relative_to(ROOT)) for p in pics)}")
    except ImportError:
        pass
    table = _table(summarize_rows(recs, verdicts_of(rows), stress_cells(rows)))
    log("")
    log(table)
    log(f"\nAUC on {len(ev.labels)} validation images ({eval_dir.relative_to(ROOT) if eval_dir.is_relative_to(ROOT) else eval_dir}); "
        f"gate (int8 only; fp32 is the reference): AUC drop vs fp32 <= {max_auc_drop}, label agreement "
        f">= {min_agreement}, on the validation images and on every corruption of the stress set "
        f"({stress_images} validation images x 10 corruptions x 3 severities; worst corruption shown); "
        f"p50 = median latency of one image on this machine; total {time.time() - t0:.0f}s")
    log(f"full results: {report_out}")
    if failed:
        log(f"edgecxr: error: {failed}")
        return 1
    return 0


def make_demo_stress(eval_dir: Path, out: Path, n: int, log) -> Path:
    """The seeded shift stress set of ``n`` evaluation images (reused when its recipe matches)."""
    from .stress import load_stress_manifest, make_stress_set, recipe

    if out.exists():
        try:
            m = load_stress_manifest(out)
            if m["recipe"] == recipe(0) and m["source"] == str(eval_dir) and m["n_source_images"] == n:
                return out
        except EdgeCXRError:
            pass
    t = time.time()
    make_stress_set(eval_dir, out, seed=0, max_images=n, force=True)
    log(f"  stress set: {out} ({time.time() - t:.0f}s)")
    return out


def _tname(t: str) -> str:
    from .targets import get_target

    return get_target(t).name


_REUSE_KEYS = ("size", "width_mult", "epochs", "lr", "recipe", "threshold_rule", "zoom", "translate",
               "intensity", "noise", "blur", "mixup", "ema", "label_smoothing")


def _check_reuse(config_json: Path, cfg) -> None:
    """A pipeline step is reused only if it was made with the same settings."""
    if not config_json.exists():
        return
    try:
        saved = json.loads(config_json.read_text())["train"]
    except (OSError, ValueError, KeyError):
        raise EdgeCXRError("unreadable config of an earlier training step; use another --out",
                           config_json) from None
    want = asdict(cfg)
    diff = [k for k in _REUSE_KEYS if k in saved and saved[k] != want.get(k)]
    if diff:
        k = diff[0]
        raise EdgeCXRError(f"the training step in this folder was made with {k}={saved[k]!r}, not {want.get(k)!r}; "
                           "use another --out (nothing was changed)", config_json.parent)


def _split_and_calibration(source: Path, out: Path, split: Path, calib: Path, log) -> None:
    from .calibrate import make_calibration_set
    from .data import make_split

    if not split.exists():
        sm = make_split(source, 0.2, 0)  # a bad source fails here, before anything is written
        out.mkdir(parents=True, exist_ok=True)
        sm.save(split)
    log(f"[1/7] split: {split}")
    if not calib.exists():
        make_calibration_set(split, out / "calibration", "calib", 256, 0)
    log(f"[2/7] calibration set: {calib}")


def _train_todo(out: Path, tcfg) -> tuple[bool, bool]:
    """(train at all, resume) for the pipeline's training step."""
    _check_reuse(out / "train" / "config.json", tcfg)
    return not (out / "train" / "metrics.json").exists(), (out / "train" / "last.pt").exists()


def pipeline(source: Path, out: Path, quick: bool = False, size: int = 224, epochs: int = 30,
             prune_ratio: float = 0.5, finetune_epochs: int = 3, device: str | None = None, log=print,
             recipe: str = "acquisition", threshold: str = "sens=0.95", train_device: str = "auto") -> int:
    """Raw images to gated bundles, every step with the project's own commands.

    Under torchrun (``torchrun --nproc_per_node=N -m edgecxr pipeline ...``) rank 0 makes the split
    and the calibration set while the others wait, every rank trains (DistributedDataParallel,
    edgecxr/distributed.py), then the other ranks exit and rank 0 alone prunes, exports, benches and
    gates. All ranks read ``out/split.json``: on several machines ``--out`` must be a shared folder.
    """
    from .distributed import session
    from .export import export_bundle, load_eval_set
    from .gate import gate
    from .preprocess import PreprocessConfig
    from .report import report
    from .train import TrainConfig, Trainer, apply_recipe

    t0 = time.time()
    split = out / "split.json"
    calib = out / "calibration" / "calib"
    steps: dict[str, float] = {}
    with session(train_device) as dd:  # None without torchrun: one process, as always
        log = dd.main_only(log) if dd is not None else log
        prepare = lambda: _split_and_calibration(source, out, split, calib, log)  # noqa: E731
        dd.run_on_main(prepare) if dd is not None else prepare()
        t = time.time()
        tcfg = TrainConfig(split=str(split), out=str(out / "train"), size=64 if quick else size,
                           width_mult=0.35 if quick else 1.0, epochs=6 if quick else epochs,
                           max_train=0, max_val=0, lr=3e-3 if quick else 1e-3, threshold_rule=threshold,
                           device=train_device)
        tcfg = apply_recipe(tcfg, recipe)
        todo = lambda: _train_todo(out, tcfg)  # noqa: E731
        run, resume = dd.run_on_main(todo) if dd is not None else todo()
        if run:
            Trainer(tcfg, log=log, show_progress=True, dist=dd).run(resume=resume)
    if dd is not None and not dd.is_main:
        return 0  # rank 0 goes on alone with prune, export, bench and gate
    steps["train"] = time.time() - t
    ckpt = out / "train" / "best.pt"
    log(f"[3/7] trained: {ckpt}")
    final = ckpt
    try:
        from .prune import prune_checkpoint
    except ImportError:
        prune_checkpoint = None
    if prune_checkpoint is not None and prune_ratio > 0:
        t = time.time()
        pdir = out / "pruned"
        if not (pdir / "best.pt").exists():
            prune_checkpoint(ckpt, pdir, prune_ratio, finetune_epochs=2 if quick else finetune_epochs,
                             split=split, log=log)
        steps["prune"] = time.time() - t
        final = pdir / "best.pt"
        log(f"[4/7] pruned ({prune_ratio}): {final}")
    from .model import read_checkpoint

    pp = PreprocessConfig.from_dict(read_checkpoint(final)["preprocess"])
    ev = load_eval_set(pp, split, None)
    bundles = []
    t = time.time()
    for tg in TARGETS:
        for prec in ("int8", "fp32"):
            s = export_bundle(final, tg, prec, out / "dist", split=split, calibration=calib, force=True,
                              log=lambda *_: None, eval_set=ev)
            bundles.append(Path(s["bundle"]))
            log(f"[5/7] exported {Path(s['bundle']).name}: {s['model_bytes'] / 1e6:.2f} MB, "
                f"AUC drop {s['auc_drop']:+.4f}")
    steps["export"] = time.time() - t
    recs = bench_all(bundles, None, out / "results", device, [], 30 if quick else 100, log)
    report(out / "results", out / "RESULTS.md")
    log(f"[6/7] benchmarked; report {out / 'RESULTS.md'}")
    rc = 0
    try:
        rows = gate([b for b in bundles if b.name.endswith("int8")], None, summary=out / "gate.md", log=lambda *_: None)
    except GateFailure as e:
        log(f"gate: {e}")
        rows, rc = e.rows, 1
    verdicts = {r.bundle: r.verdict for r in rows}
    log(f"[7/7] gate: {'PASS' if rc == 0 else 'FAIL'} ({out / 'gate.md'})\n")
    log(_table(summarize_rows(recs, verdicts)))
    steps["total"] = time.time() - t0
    (out / "pipeline.json").write_text(json.dumps({"source": str(source), "quick": quick, "seconds": steps}, indent=1))
    return rc
