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

from edgecxr.host.train_config import DEFAULT_RECIPE, DEFAULT_THRESHOLD_RULE
from edgecxr.shared.data import within_image_memo
from edgecxr.shared.errors import EdgeCXRError, GateFailure

ROOT = Path(__file__).resolve().parents[2]  # the repository (edgecxr/host/workflows.py)
TARGETS = ("rpi", "nuc", "jetson", "x86-ort")


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
            known.setdefault(r.bundle, []).append(r.images[len("stress:"):] if r.images.startswith("stress:")
                                                   else "near-threshold")
    return {b: "FAIL" if f else "PASS" + (f" (known: {', '.join(known[b])})" if b in known else "")
            for b, f in failed.items()}


# Stress rows known to fail with the shipped recipes, each tracked by an open issue (the gate still
# shows their numbers). None with the retrained models: LiteRT int8 under heavy quantum noise, the
# one known failure of the first models (agreement 0.964-0.973 in benchmarks/quantization.md),
# passes with them. Keep in step with CI_EXPECT_FAIL in the Makefile.
# The near-threshold criterion (gate --near-margin/--max-near-flip-rate) is new and the shipped int8
# bundles do not meet it yet: 16-24% of the stress images within 0.05 of the threshold flip their call
# (pruned model, x86 AVX-512 VNNI; LiteRT 13 of 55, ONNX Runtime 11, OpenVINO 9, on the edge at 0.089 of
# 0.10), the same picture as on unseen patients. Issue 26 tracks it; the rows show their numbers as KNOWN.
KNOWN_STRESS_FAILURES: list[str] = ["litert:near-threshold", "onnxruntime:near-threshold", "openvino:near-threshold"]


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def bench_all(bundles: list[Path], eval_dir: Path | None, results: Path, device: str | None, extra: list | None,
              iterations: int, log) -> list[dict[str, Any]]:
    from edgecxr.device.bench import BenchConfig, run, store, subject_from_bundle

    recs = []
    subjects = [subject_from_bundle(b) for b in bundles] + list(extra or [])
    for s in subjects:
        cfg = BenchConfig(warmup=10, iterations=iterations, accuracy=not s.name.startswith("baseline-"), floor=True)
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


@dataclass
class Tail:
    """What the shared export -> bench -> report -> gate tail produced."""
    bundles: list[Path]
    records: list[dict[str, Any]]
    rows: list[Any]  # gate rows
    failure: GateFailure | None
    table: str


@within_image_memo  # bench and gate decode, preprocess and run each image once, not once per bundle
def export_bench_report_gate(models: list[Model], dist: Path, results: Path, report_out: Path, log, *,
                             eval_dir: Path | None = None, split: Path | None = None, calibration: Path,
                             eval_set=None, name_bundles: bool = True, device: str | None = None,
                             iterations: int = 100, extra_subjects: list | None = None,
                             max_auc_drop: float = 0.005, min_agreement: float = 0.98,
                             stress: Path | None = None, gate_summary: Path | None = None,
                             gate_details: Path | None = None, expect_fail: list[str] | None = None,
                             against_twins: bool = True, step: str = "") -> Tail:
    """The one tail of ``demo`` and ``pipeline``: every model to every target and precision, each
    bundle benched on the evaluation images (``eval_dir``, or the validation part of ``split``),
    the report written, the int8 bundles gated (against their fp32 twins, or with ``against_twins``
    false against the float reference each bundle carries). A gate failure is returned, not raised,
    so the caller prints the table first."""
    from edgecxr.device.gate import gate
    from edgecxr.device.report import report
    from edgecxr.host.export import export_bundle, load_eval_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig

    bundles: list[Path] = []
    ev = eval_set
    t0 = time.time()
    for m in models:
        pp = PreprocessConfig.from_dict(read_checkpoint(m.checkpoint)["preprocess"])
        if ev is None or ev.x.shape[-1] != pp.size:
            ev = load_eval_set(pp, split, eval_dir)
        for t in TARGETS:
            for prec in m.precisions:
                t1 = time.time()
                s = export_bundle(m.checkpoint, t, prec, dist, data=eval_dir, split=split, calibration=calibration,
                                  force=True, name=f"{m.tag}-{_tname(t)}-{prec}" if name_bundles else None,
                                  log=lambda *_: None, eval_set=ev)
                log(f"{step}  export {Path(s['bundle']).name}: {s['model_bytes'] / 1e6:.2f} MB, AUC drop "
                    f"{s['auc_drop']:+.4f}, agreement {s['label_agreement']:.3f} ({time.time() - t1:.0f}s)")
                bundles.append(Path(s["bundle"]))
    log(f"{step}  exported {len(bundles)} bundles ({time.time() - t0:.0f}s)")
    recs = bench_all(bundles, eval_dir, results, device, extra_subjects, iterations, log)
    log(f"  report: {report(results, report_out)}")
    int8 = [b for b in bundles if b.name.endswith("-int8")]
    failure = None
    t1 = time.time()
    try:
        rows = gate(int8, eval_dir, max_auc_drop, min_agreement, stress=stress,
                    references=[b for b in bundles if b.name.endswith("-fp32")] if against_twins else None,
                    summary=gate_summary, details=gate_details, log=lambda *_: None, expect_fail=expect_fail)
    except GateFailure as e:
        failure, rows = e, e.rows
    log(f"  gate: {len(int8)} int8 bundles on {len(ev.labels)} evaluation images"
        + (f" and the stress set {stress}" if stress else "") + f" ({time.time() - t1:.0f}s)")
    table = _table(summarize_rows(recs, verdicts_of(rows), stress_cells(rows)))
    return Tail(bundles, recs, rows, failure, table)


@within_image_memo  # each evaluation and stress image decoded and preprocessed once in this run
def demo(models_dir: Path = ROOT / "models", eval_dir: Path = ROOT / "data" / "kermany224-val",
         calibration: Path = ROOT / "calibration" / "kermany224", dist: Path = ROOT / "dist",
         results: Path = ROOT / "benchmarks" / "results", report_out: Path = ROOT / "benchmarks" / "RESULTS.md",
         device: str | None = None, iterations: int = 100, baseline: str | None = "densenet121",
         max_auc_drop: float = 0.005, min_agreement: float = 0.98, stress_images: int = 100, log=print) -> int:
    from edgecxr.host.export import load_eval_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.host.torchref import subject_baseline, subject_from_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig

    t0 = time.time()
    models = reference_models(models_dir)
    if not models:
        raise EdgeCXRError("no reference model (models/mnv2-ref.pt); train one with `edgecxr pipeline`", models_dir)
    if not eval_dir.is_dir():
        raise EdgeCXRError("evaluation images not found", eval_dir)

    pp = PreprocessConfig.from_dict(read_checkpoint(models[0].checkpoint)["preprocess"])
    ev = load_eval_set(pp, None, eval_dir)
    extra = [subject_from_checkpoint(models[0].checkpoint)]
    extra[0].name = f"{models[0].tag}-pytorch-fp32"
    extra[0].data_hint = {"data": str(eval_dir)}
    if baseline:
        extra.append(subject_baseline(baseline, ev.x.shape[-1]))
    stress = make_demo_stress(eval_dir, dist / f"stress-{stress_images}", stress_images, log) if stress_images else None
    tail = export_bench_report_gate(models, dist, results, report_out, log, eval_dir=eval_dir, calibration=calibration,
                                    eval_set=ev, device=device, iterations=iterations, extra_subjects=extra,
                                    max_auc_drop=max_auc_drop, min_agreement=min_agreement, stress=stress,
                                    gate_summary=ROOT / "benchmarks" / "gate-summary.md",
                                    gate_details=dist / "gate.json", expect_fail=KNOWN_STRESS_FAILURES)
    try:
        from edgecxr.shared.plots import int8_vs_fp32

        pics = int8_vs_fp32(dist / "gate.json", ROOT / "benchmarks" / "plots")
        log(f"  int8 against fp32 pictures: {', '.join(str(p.relative_to(ROOT)) for p in pics)}")
    except ImportError:
        pass
    log("")
    log(tail.table)
    log(f"\nAUC on {len(ev.labels)} validation images ({eval_dir.relative_to(ROOT) if eval_dir.is_relative_to(ROOT) else eval_dir}); "
        f"gate (int8 only; fp32 is the reference): AUC drop vs fp32 <= {max_auc_drop}, label agreement "
        f">= {min_agreement}, on the validation images and on every corruption of the stress set "
        f"({stress_images} validation images x 10 corruptions x 3 severities; worst corruption shown); "
        f"p50 = median latency of one image on this machine; total {time.time() - t0:.0f}s")
    log(f"full results: {report_out}")
    if tail.failure:
        log(f"edgecxr: error: {tail.failure}")
        return 1
    return 0


def make_demo_stress(eval_dir: Path, out: Path, n: int, log) -> Path:
    """The seeded shift stress set of ``n`` evaluation images (reused when its recipe matches)."""
    from edgecxr.shared.stress import load_stress_manifest, make_stress_set, recipe

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
    from edgecxr.shared.targets import get_target

    return get_target(t).name


_REUSE_KEYS = ("size", "width_mult", "epochs", "lr", "recipe", "threshold_rule", "zoom", "translate",
               "intensity", "noise", "blur", "mixup", "ema", "label_smoothing")


class StepRecord:
    """``pipeline.json`` in ``--out``: each finished step's settings. A step is reused only when its
    settings match; otherwise it is re-run, except where re-running would throw away another run's
    work (a different source, another training configuration): then one line and nothing changed."""

    def __init__(self, out: Path):
        self.path = out / "pipeline.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
                if not isinstance(self.data.get("steps", {}), dict):
                    raise ValueError
            except (OSError, ValueError, AttributeError):
                raise EdgeCXRError("unreadable record of an earlier pipeline run; use another --out",
                                   self.path) from None
        self.data.setdefault("steps", {})

    def settings(self, step: str) -> dict[str, Any] | None:
        got = self.data["steps"].get(step)
        return got.get("settings") if isinstance(got, dict) else None

    def matches(self, step: str, settings: dict[str, Any]) -> bool:
        return self.settings(step) == json.loads(json.dumps(settings))

    def done(self, step: str, settings: dict[str, Any], seconds: float) -> None:
        from edgecxr.shared.fsutil import atomic_write_json

        self.data["steps"][step] = {"settings": settings, "seconds": round(seconds, 1)}
        atomic_write_json(self.path, self.data, indent=1)


def _check_reuse(config_json: Path, cfg) -> None:
    """A training step is reused only if it was made with the same settings."""
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


def _split_and_calibration(source: Path, out: Path, split: Path, calib: Path, rec: StepRecord, log) -> None:
    """Steps 1 and 2, each reused only when its recorded settings match."""
    from edgecxr.host.calibrate import make_calibration_set
    from edgecxr.shared.data import make_split
    from edgecxr.shared.fsutil import sha256_file

    want = {"source": str(Path(source).resolve()), "val_fraction": 0.2, "seed": 0}
    if split.exists() and rec.settings("split") not in (None, want):
        raise EdgeCXRError(f"this folder holds a pipeline run on {rec.settings('split')['source']}; "
                           "use another --out (nothing was changed)", out)
    if not split.exists():
        t = time.time()
        sm = make_split(source, 0.2, 0)  # a bad source fails here, before anything is written
        out.mkdir(parents=True, exist_ok=True)
        sm.save(split)
        rec.done("split", want, time.time() - t)
    log(f"[1/7] split: {split}")
    want = {"split_sha256": sha256_file(split), "n": 256, "seed": 0}
    if not calib.exists() or not rec.matches("calibration", want):
        t = time.time()
        make_calibration_set(split, out / "calibration", "calib", 256, 0, force=calib.exists())
        rec.done("calibration", want, time.time() - t)
    log(f"[2/7] calibration set: {calib}")


def _train_todo(out: Path, tcfg) -> tuple[bool, bool]:
    """(train at all, resume) for the pipeline's training step."""
    _check_reuse(out / "train" / "config.json", tcfg)
    return not (out / "train" / "metrics.json").exists(), (out / "train" / "last.pt").exists()


def pipeline(source: Path, out: Path, quick: bool = False, size: int = 224, epochs: int = 30,
             prune_ratio: float = 0.5, finetune_epochs: int = 3, device: str | None = None, log=print,
             recipe: str = DEFAULT_RECIPE, threshold: str = DEFAULT_THRESHOLD_RULE, train_device: str = "auto") -> int:
    """Raw images to gated bundles, every step with the project's own commands.

    Under torchrun (``torchrun --nproc_per_node=N -m edgecxr pipeline ...``) rank 0 makes the split
    and the calibration set while the others wait, every rank trains (DistributedDataParallel,
    edgecxr/host/distributed.py), then the other ranks exit and rank 0 alone prunes, exports, benches
    and gates. All ranks read ``out/split.json``: on several machines ``--out`` must be a shared folder.
    """
    from edgecxr.host.distributed import session
    from edgecxr.host.train import TrainConfig, Trainer, apply_recipe
    from edgecxr.shared.fsutil import sha256_file

    t0 = time.time()
    split = out / "split.json"
    calib = out / "calibration" / "calib"
    steps: dict[str, float] = {}
    with session(train_device) as dd:  # None without torchrun: one process, as always
        log = dd.main_only(log) if dd is not None else log
        rec = StepRecord(out)
        prepare = lambda: _split_and_calibration(source, out, split, calib, rec, log)  # noqa: E731
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
    rec = StepRecord(out)  # rank 0 re-reads what rank 0 wrote before training
    if run:
        rec.done("train", {k: v for k, v in asdict(tcfg).items() if k in _REUSE_KEYS}, time.time() - t)
    steps["train"] = time.time() - t
    ckpt = out / "train" / "best.pt"
    log(f"[3/7] trained: {ckpt}")
    final = ckpt
    try:
        from edgecxr.host.prune import prune_checkpoint
    except ImportError:
        prune_checkpoint = None
    if prune_checkpoint is not None and prune_ratio > 0:
        t = time.time()
        pdir = out / "pruned"
        ft = 2 if quick else finetune_epochs
        want = {"checkpoint_sha256": sha256_file(ckpt), "ratio": prune_ratio, "finetune_epochs": ft}
        if not (pdir / "best.pt").exists() or not rec.matches("prune", want):
            prune_checkpoint(ckpt, pdir, prune_ratio, finetune_epochs=ft, split=split, log=log,
                             force=(pdir / "best.pt").exists())
            rec.done("prune", want, time.time() - t)
        steps["prune"] = time.time() - t
        final = pdir / "best.pt"
        log(f"[4/7] pruned ({prune_ratio}): {final}")
    t = time.time()
    tail = export_bench_report_gate([Model("", final, ("int8", "fp32"))], out / "dist", out / "results",
                                    out / "RESULTS.md", log, split=split, calibration=calib, name_bundles=False,
                                    device=device, iterations=30 if quick else 100, against_twins=False,
                                    gate_summary=out / "gate.md", step="[5/7]")
    steps["export, bench, gate"] = time.time() - t
    log(f"[6/7] benchmarked; report {out / 'RESULTS.md'}")
    if tail.failure:
        log(f"gate: {tail.failure}")
    log(f"[7/7] gate: {'PASS' if tail.failure is None else 'FAIL'} ({out / 'gate.md'})\n")
    log(tail.table)
    steps["total"] = time.time() - t0
    rec.data.update({"source": str(source), "quick": quick, "seconds": steps})
    rec.done("tail", {"targets": list(TARGETS)}, steps["export, bench, gate"])
    return 1 if tail.failure else 0
