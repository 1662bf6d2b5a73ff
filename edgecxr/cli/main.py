"""The ``edgecxr`` command line (typer).

Commands import their heavy modules lazily: ``edgecxr bench`` on a board never
imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from edgecxr.host.export import recipes as _recipes
from edgecxr.host.train_config import default as _td
from edgecxr.shared import runtimes as _runtimes
from edgecxr.shared.errors import EdgeCXRError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="edgecxr: train, prune and quantize a MobileNetV2 chest X-ray pneumonia classifier, "
         "export it per board (LiteRT, OpenVINO, ONNX Runtime/TensorRT), and measure what each "
         "board costs and loses.",
    epilog="In the clinic: edgecxr serve dist/rpi4-int8 --pacs ORTHANC@10.0.0.5:4242 --http 0.0.0.0:8000 "
           "--token-file /etc/edgecxr/token (DICOM C-STORE in, TID 1500 SR back to the PACS; the Open "
           "Inference Protocol, STOW-RS, /metrics and a page over HTTP; see edgecxr serve --help).",
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets and record train/validation splits.")
app.add_typer(data_app, name="data")


def err(msg: str) -> None:
    typer.echo(f"edgecxr: error: {msg}", err=True)


def info(msg: str) -> None:
    typer.echo(msg, err=True)


MaxPixelsOption = Annotated[int | None, typer.Option(
    help="Refuse images with more pixels than this, from the header before decoding (default 64000000; "
         "env EDGECXR_MAX_PIXELS)")]
ForceAnatomyOption = Annotated[bool, typer.Option(
    help="Read DICOMs whose Modality is not CR/DX, BodyPartExamined not CHEST or ViewPosition lateral "
         "(refused by default; env EDGECXR_FORCE_ANATOMY=1)")]


def _intake(max_pixels: int | None, force_anatomy: bool) -> None:
    from edgecxr.shared.intake import configure

    configure(max_pixels=max_pixels, force_anatomy=force_anatomy or None)


# ---------------------------------------------------------------- data
@data_app.command("check")
def data_check(
    source: Annotated[Path, typer.Argument(help="ROOT folder with NORMAL/ and PNEUMONIA/, or a MedMNIST .npz")],
    strict: Annotated[bool, typer.Option(help="Stop at the first bad file instead of skipping it")] = False,
    max_pixels: MaxPixelsOption = None,
    force_anatomy: ForceAnatomyOption = False,
):
    """Scan a dataset and report class counts and every skipped file.

    Example: edgecxr data check ../shared/data/kermany224/train
    """
    from edgecxr.shared.data import scan
    from edgecxr.shared.progress import bar

    _intake(max_pixels, force_anatomy)
    with bar(0, "scanning") as _:
        ds = scan(source, strict)
    _report_dataset(ds)


def _report_dataset(ds) -> None:
    c = ds.counts()
    typer.echo(f"{len(ds.items)} images: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    for n in ds.notes:
        typer.echo(f"note: {n}")
    for s in ds.skipped:
        typer.echo(f"skipped {s.path}: {s.reason}")
    if ds.skipped:
        typer.echo(f"{len(ds.skipped)} file(s) skipped")


@data_app.command("split")
def data_split(
    source: Annotated[Path, typer.Argument(help="ROOT folder with NORMAL/ and PNEUMONIA/, or a MedMNIST .npz")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Split manifest to write (JSON)")],
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Fraction of each class for validation")] = 0.2,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad file instead of skipping it")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite an existing manifest")] = False,
    resplit: Annotated[bool, typer.Option(help="Re-split an .npz instead of keeping its official train/val parts")] = False,
    max_pixels: MaxPixelsOption = None,
    force_anatomy: ForceAnatomyOption = False,
):
    """Record a seeded, stratified, patient-grouped train/validation split.

    Example: edgecxr data split ../shared/data/kermany224/train --out splits/kermany224.json --seed 0
    """
    from edgecxr.shared.data import make_split

    _intake(max_pixels, force_anatomy)
    if out.exists() and not force:
        raise EdgeCXRError("split manifest exists (every later step reads it); use --force to replace it", out)
    from edgecxr.shared.progress import bar

    with bar(0, "reading images") as _:
        sm = make_split(source, val_fraction, seed, strict, resplit=resplit)
    sm.save(out)
    d = sm.to_dict()
    typer.echo(f"wrote {out}: train {d['counts']['train']}, val {d['counts']['val']}, "
               f"grouped by patient: {sm.grouped_by_patient}")
    for s in sm.skipped:
        typer.echo(f"skipped {s.path}: {s.reason}")
    for n in sm.notes:
        typer.echo(f"note: {n}")
    if sm.skipped:
        typer.echo(f"{len(sm.skipped)} file(s) skipped")


@data_app.command("stress")
def data_stress(
    source: Annotated[Path, typer.Argument(help="ROOT folder with NORMAL/ and PNEUMONIA/, a MedMNIST .npz, "
                                                 "or a split manifest (its validation part)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: OUT/<corruption>-s<severity>/{NORMAL,PNEUMONIA}/ and OUT/manifest.json")],
    seed: Annotated[int, typer.Option(help="Random seed (directions, noise, subset)")] = 0,
    severity: Annotated[str, typer.Option(help="Comma-separated severities, each 1 (mild) to 3 (strong)")] = "1,2,3",
    corruptions: Annotated[str, typer.Option(help="Comma-separated corruptions (default: all): exposure, contrast, gamma, "
                                                   "noise, blur, jpeg, zoom, crop_pad, rotation, resample")] = "",
    max_images: Annotated[int, typer.Option(help="Cap on source images, stratified and seeded (0 = all)")] = 0,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder")] = False,
):
    """Make a seeded shift stress set: every image under every corruption and severity, as labelled folders.

    Mimics what differs between hospitals and X-ray machines (exposure, contrast, gamma, noise, blur,
    JPEG, zoom, crop, rotation, resize filter). Each OUT/<corruption>-s<severity> folder is a valid --data folder.

    Example: edgecxr data stress splits/kermany224.json --out data/stress --max-images 200
    """
    import contextlib

    from edgecxr.shared.progress import bar
    from edgecxr.shared.stress import make_stress_set

    sevs = []
    for tok in (t.strip() for t in severity.split(",")):
        if tok:
            try:
                sevs.append(int(tok))
            except ValueError:
                raise EdgeCXRError(f"--severity {tok!r} is not a number; known: 1, 2, 3") from None
    names = [t.strip() for t in corruptions.split(",") if t.strip()] or None
    with contextlib.ExitStack() as stack:
        advance = []

        def progress(done: int, total: int) -> None:
            if not advance:
                advance.append(stack.enter_context(bar(total, "stressing images")))
            advance[0]()

        final = make_stress_set(source, out, seed=seed, severities=sevs, corruptions=names,
                                max_images=max_images, force=force, progress=progress)
    from edgecxr.shared.stress import load_stress_manifest

    m = load_stress_manifest(final)
    rec = m["recipe"]["corruptions"]
    for g, info_ in m["groups"].items():
        params = ", ".join(f"{k} {v}" for k, v in rec[info_["corruption"]]["severities"][str(info_["severity"])].items())
        typer.echo(f"{g:<14} {info_['n']:>5} images  ({params})")
    typer.echo(f"wrote {final}: {len(m['groups'])} groups x {m['n_source_images']} source images "
               f"({', '.join(f'{k} {v}' for k, v in m['counts'].items())}) = {len(m['items'])} images, "
               f"seed {seed}, recipe v{m['recipe']['version']}")


# ---------------------------------------------------------------- train
@app.command()
def train(
    ctx: typer.Context,
    split: Annotated[Path | None, typer.Option(help="Split manifest from `edgecxr data split` (required unless --config)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (required unless --config)")] = None,
    config: Annotated[Path | None, typer.Option(help="Replay a run: its RUN/config.json supplies every setting; "
                                                     "options given here override them")] = None,
    size: Annotated[int, typer.Option(help="Input size in pixels")] = _td("size"),
    width: Annotated[float, typer.Option(help="MobileNetV2 width multiplier")] = _td("width_mult"),
    init: Annotated[str, typer.Option(help="imagenet | none | PATH to a state dict or checkpoint")] = _td("init"),
    freeze_blocks: Annotated[int, typer.Option(help="Freeze the first K feature blocks")] = _td("freeze_blocks"),
    epochs: Annotated[int, typer.Option(help="Maximum epochs")] = _td("epochs"),
    batch_size: Annotated[int, typer.Option(help="Batch size")] = _td("batch_size"),
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = _td("lr"),
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay")] = _td("weight_decay"),
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs without val-loss improvement)")] = _td("patience"),
    rotation: Annotated[float | None, typer.Option(help="Random rotation range in degrees")] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Random horizontal flips")] = None,
    class_weighting: Annotated[bool, typer.Option(help="Weight the loss by inverse class frequency")] = _td("class_weighting"),
    recipe: Annotated[str, typer.Option(help="Training recipe preset: acquisition (measured best, see "
                                             "benchmarks/training.md) | paper | robust | robust-mixup; "
                                             "options given explicitly override it")] = _td("recipe"),
    zoom: Annotated[float | None, typer.Option(help="Random zoom in and out, scale in [1/(1+z), 1+z]")] = None,
    translate: Annotated[float | None, typer.Option(help="Random shift, fraction of the image size")] = None,
    intensity: Annotated[float | None, typer.Option(help="Exposure, contrast and gamma jitter strength")] = None,
    noise: Annotated[float | None, typer.Option(help="Max Gaussian noise sigma (grey 0..1)")] = None,
    blur: Annotated[float | None, typer.Option(help="Max Gaussian blur sigma, pixels at 224 px")] = None,
    mixup: Annotated[float | None, typer.Option(help="Mixup Beta(a, a) alpha (0 = off)")] = None,
    ema: Annotated[float | None, typer.Option(help="EMA decay of the weights kept as best.pt (0 = off)")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing of the training loss")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (bf16 autocast on CUDA)")] = _td("device"),
    seed: Annotated[int, typer.Option(help="Random seed")] = _td("seed"),
    threads: Annotated[int, typer.Option(help="Torch threads (0 = all cores)")] = _td("threads"),
    max_train: Annotated[int, typer.Option(help="Cap on training images, stratified (0 = all)")] = _td("max_train"),
    max_val: Annotated[int, typer.Option(help="Cap on validation images, stratified (0 = all)")] = _td("max_val"),
    threshold: Annotated[str, typer.Option(help="Operating threshold rule on validation: sens=0.95 (held best "
                                                "under shift, benchmarks/training.md) | youden")] = _td("threshold_rule"),
    resume: Annotated[bool, typer.Option(help="Resume an interrupted run from its last.pt")] = False,
    sync_bn: Annotated[bool, typer.Option(help="Under torchrun on GPUs: synchronized batch norm across processes")] = False,
    dist_timeout: Annotated[float, typer.Option(help="Under torchrun: seconds a process waits for the others "
                                                     "before it gives up (a hung rank)")] = 600.0,
):
    """Train MobileNetV2 (Adam, cosine annealing, early stopping, the acquisition augmentation recipe).

    Several processes: torchrun --nproc_per_node=2 -m edgecxr train ... (DistributedDataParallel;
    --batch-size is the global batch; README, 'Training on several processes').

    Example: edgecxr train --split splits/kermany224.json --out runs/mnv2 --epochs 30

    Quick check: edgecxr train --split splits/mini.json --out runs/tiny --size 64 --width 0.35 --epochs 2

    Replay a run elsewhere: edgecxr train --config runs/mnv2/config.json --out runs/mnv2-again
    """
    from edgecxr.host.train_config import load_run_config

    options = dict(ctx.params)
    cfg = _train_settings(ctx, options, load_run_config(config) if config is not None else None)
    from edgecxr.host.distributed import session
    from edgecxr.host.train import Trainer

    with session(cfg.device, sync_bn=sync_bn, timeout_s=dist_timeout) as dd:
        res = Trainer(cfg, log=info, dist=dd).run(resume=resume)
    if dd is not None and not dd.is_main:
        return
    typer.echo(f"best checkpoint: {Path(cfg.out) / 'best.pt'} (epoch {res['best_epoch']}, "
               f"val AUC {res['metrics']['auc']:.4f}, accuracy {res['metrics']['accuracy']:.4f})")


# `edgecxr train` option -> TrainConfig field; the augmentation options (None = the recipe's) are apart.
_TRAIN_FIELDS = {"split": "split", "out": "out", "size": "size", "width": "width_mult", "init": "init",
                 "freeze_blocks": "freeze_blocks", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
                 "weight_decay": "weight_decay", "patience": "patience", "class_weighting": "class_weighting",
                 "device": "device", "seed": "seed", "threads": "threads", "max_train": "max_train",
                 "max_val": "max_val", "threshold": "threshold_rule"}
_AUGMENTATION = ("zoom", "translate", "intensity", "noise", "blur", "mixup", "ema", "label_smoothing",
                 "rotation", "hflip")


def _train_settings(ctx: typer.Context, options: dict, saved: dict | None):
    """The TrainConfig ``edgecxr train`` runs: the options, over the replayed run's settings with --config.

    Without --config every option counts (their defaults are TrainConfig's) and the recipe is applied;
    with it only the options given on the command line override the saved settings, and the recipe is
    applied only when --recipe is given (otherwise the run's own augmentation is kept).
    """
    from edgecxr.host.train_config import resolve_train_config

    def given(name: str) -> bool:  # by name: typer may carry its own copy of click's ParameterSource
        source = ctx.get_parameter_source(name)
        return saved is None or getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")

    base = {fld: options[opt] for opt, fld in _TRAIN_FIELDS.items() if given(opt) and options[opt] is not None}
    for k in ("split", "out"):
        if k in base:
            base[k] = str(base[k])
    augmentation = {k: options[k] for k in _AUGMENTATION if options[k] is not None}
    return resolve_train_config(base, saved=saved, recipe=options["recipe"] if given("recipe") else None,
                                augmentation=augmentation)


# ---------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint (best.pt)")],
    split: Annotated[Path | None, typer.Option(help="Split manifest: evaluate on its validation part")] = None,
    data: Annotated[Path | None, typer.Option(help="Labelled folder or .npz to evaluate on")] = None,
    threshold: Annotated[str | None, typer.Option(help="Re-choose the threshold: youden | sens=0.95 (default: the saved one)")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here")] = None,
    save: Annotated[Path | None, typer.Option(help="Write a copy of the checkpoint carrying the threshold "
                                                   "re-chosen on validation (needs --split and --threshold)")] = None,
    reliability: Annotated[Path | None, typer.Option(help="Draw the reliability diagram (PNG) here")] = None,
    fold_temperature: Annotated[bool, typer.Option(help="With --save: fold the temperature fitted on validation "
                                                        "into the classifier (calibrated probabilities on every runtime)")] = False,
):
    """Clinical metrics: AUC with 95% DeLong CI, accuracy, sensitivity, specificity, PPV, NPV,
    and calibration (expected calibration error, the temperature that would fit these images).

    Example: edgecxr evaluate runs/mnv2/best.pt --split splits/kermany224.json
    """
    from edgecxr.host.evaluate import evaluate as run_eval
    from edgecxr.host.train import format_metrics

    res = run_eval(checkpoint, split, data, threshold, out, log=info, save=save, reliability=reliability,
                   fold_temperature=fold_temperature)
    typer.echo(format_metrics(res["metrics"], res["data"]))
    cal = res["metrics"]["calibration"]
    typer.echo(f"calibration: ECE {cal['ece']:.4f} (15 bins); a temperature fitted on these images would be "
               f"{cal['temperature_fit_here']:.2f} (ECE {cal['ece_after_temperature']:.4f})")
    typer.echo(f"threshold: {res['threshold_rule']}")
    if save:
        typer.echo(f"saved {save} with threshold {res['metrics']['threshold']:.4f} ({threshold} on validation)")


# ---------------------------------------------------------------- targets / calibrate / export
@app.command()
def targets():
    """List the board profiles in targets/*.toml.

    Example: edgecxr targets
    """
    from edgecxr.shared.targets import all_targets

    ts = all_targets()
    typer.echo(f"{'target':<18} {'aliases':<18} {'backend':<12} {'precision':<9} {'threads':>7}  description")
    for t in ts.values():
        typer.echo(f"{t.name:<18} {','.join(t.aliases) or '-':<18} {t.backend:<12} {t.precision:<9} {t.threads:>7}  {t.description}")


@app.command()
def calibrate(
    split: Annotated[Path, typer.Option(help="Split manifest; images are drawn from its training part only")],
    name: Annotated[str, typer.Option(help="Name of the set: calibration/<name>/")] = "default",
    n: Annotated[int, typer.Option(help="Number of images (stratified)")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    out_dir: Annotated[Path, typer.Option(help="Parent folder")] = Path("calibration"),
    force: Annotated[bool, typer.Option(help="Replace an existing set")] = False,
):
    """Pick a seeded, stratified int8 calibration set from the training split and copy it in.

    Example: edgecxr calibrate --split splits/kermany224.json --name kermany224 --n 256
    """
    from edgecxr.host.calibrate import make_calibration_set

    path = make_calibration_set(split, out_dir, name, n, seed, force)
    typer.echo(f"wrote calibration set {path}")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Trained checkpoint (best.pt)")],
    target: Annotated[str, typer.Option("--target", "-t", help="Board profile or alias: rpi, rpi5, nuc, jetson (see `edgecxr targets`); several: rpi,nuc,jetson")],
    precision: Annotated[str | None, typer.Option(help="int8 | fp32 | both (default: the profile's)")] = None,
    split: Annotated[Path | None, typer.Option(help="Split manifest: check on its validation part")] = None,
    data: Annotated[Path | None, typer.Option(help="Labelled folder to check on instead of a split")] = None,
    calibration: Annotated[Path, typer.Option(help="Calibration set folder (int8)")] = Path("calibration/default"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder for bundles")] = Path("dist"),
    force: Annotated[bool, typer.Option(help="Replace an existing bundle")] = False,
    quant: Annotated[str | None, typer.Option(help="int8 recipe (default: the backend's measured winner, listed first; see "
                                              "benchmarks/quantization.md): " + _recipes.help_text())] = None,
    calib_stress: Annotated[bool, typer.Option(help="Also calibrate on one seeded stress-corrupted copy of each calibration image")] = False,
    sign: Annotated[Path | None, typer.Option(help="Sign each bundle with this private key (from `edgecxr keys new`); "
                                              "the signature covers every file, manifest.json included")] = None,
):
    """Export a checkpoint to a board's runtime as a self-describing bundle (+ one .tar to copy).

    The new artifact is run in its own runtime on the evaluation images and compared with the float
    PyTorch model before the bundle is written.

    Examples:
      edgecxr export runs/mnv2/best.pt --target rpi --split splits/kermany224.json
      edgecxr export models/mnv2-ref.pt --target rpi,nuc,jetson --precision both --data data/kermany224-val
    """
    from edgecxr.host.export import export_bundle, load_eval_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig
    from edgecxr.shared.targets import get_target

    tgts = [get_target(t) for t in target.split(",") if t.strip()]
    ev = None
    if split is not None or data is not None:
        pp = PreprocessConfig.from_dict(read_checkpoint(checkpoint)["preprocess"])
        ev = load_eval_set(pp, split, data)
    for tgt in tgts:
        precs = ["int8", "fp32"] if precision == "both" else [precision or tgt.precision]
        for p in precs:
            s = export_bundle(checkpoint, tgt, p, out, split, data, calibration, force, log=info, eval_set=ev,
                              quant=quant if p == "int8" else None, calib_stress=int(calib_stress),
                              sign=sign)
            _print_export(s)


def _print_export(s: dict) -> None:
    typer.echo(f"{s['bundle']}  ({s['backend']}, {s['precision']}"
               + (f", recipe {s['recipe']}" if s.get("recipe") else "") + f", {s['model_bytes'] / 1e6:.2f} MB, "
               f"{s['export_seconds']:.0f}s)  archive: {s['archive']}")
    typer.echo(f"  n={s['n']}  AUC float {s['auc_float']:.4f}  AUC bundle {s['auc_artifact']:.4f}  "
               f"drop {s['auc_drop']:+.4f}  agreement {s['label_agreement']:.4f}  "
               f"|dp| mean {s['mean_abs_prob_diff']:.4f} max {s['max_abs_prob_diff']:.4f}")


# ---------------------------------------------------------------- bench / report / gate
@app.command()
def bench(
    bundles: Annotated[list[Path] | None, typer.Argument(help="Bundle folders")] = None,
    data: Annotated[Path | None, typer.Option(help="Labelled images (folder or .npz); default: the bundle's reference set")] = None,
    device: Annotated[str | None, typer.Option(help="Device name for the results file (default: from the CPU)")] = None,
    results: Annotated[Path, typer.Option(help="Results folder")] = Path("benchmarks/results"),
    warmup: Annotated[int, typer.Option(help="Warm-up iterations")] = 10,
    iterations: Annotated[int, typer.Option(help="Timed iterations (minimum when --time is set)")] = 100,
    time_budget: Annotated[float, typer.Option("--time", help="Time budget in seconds for the timed loop (0 = fixed iterations)")] = 0.0,
    batch: Annotated[int, typer.Option(help="Batch size for the latency loop")] = 1,
    extra_batch: Annotated[int, typer.Option(help="Also time this larger batch (throughput)")] = 0,
    threads: Annotated[int | None, typer.Option(help="Threads (default: the profile's, capped at the cores here)")] = None,
    max_images: Annotated[int, typer.Option(help="Use at most this many evaluation images (0 = all)")] = 0,
    option: Annotated[list[str] | None, typer.Option("--option", help="Backend option KEY=VALUE, repeatable; each subject gets the keys its runtime reads "
                                                    "(" + _runtimes.options_help() + ")")] = None,
    ov_precision: Annotated[str | None, typer.Option(help="OpenVINO inference precision hint: f32 | bf16 | f16 (same as --option inference_precision=...)")] = None,
    torch_checkpoint: Annotated[Path | None, typer.Option("--torch", help="Also bench this checkpoint in PyTorch fp32 (host only)")] = None,
    baseline: Annotated[str | None, typer.Option(help="Also time an untrained heavy baseline: densenet121 (host only)")] = None,
    no_store: Annotated[bool, typer.Option(help="Print only; do not append to the results file")] = False,
    reference: Annotated[Path | None, typer.Option(help="fp32 twin bundle: pair with it on the same images (a site's own --data), paired AUC drop, DeLong p, flipped files")] = None,
    max_pixels: MaxPixelsOption = None,
    force_anatomy: ForceAnatomyOption = False,
    floor: Annotated[bool, typer.Option("--floor", help="Also measure this machine's compute floor (numpy SGEMM) for the report's p50/floor ratios")] = False,
):
    """Benchmark bundles on this board: size, latency (p50/p90/p99), cold start, memory, AUC and
    the AUC drop against the float model on the identical images. Appends one record per bundle
    to benchmarks/results/<device>.jsonl.

    Examples:
      edgecxr bench dist/rpi4-int8 dist/rpi4-fp32
      edgecxr bench dist/nuc-int8 --data data/eval --time 10 --extra-batch 8
    """
    from edgecxr.cli.output import print_bench
    from edgecxr.device.bench import BenchConfig, run, store, subject_from_bundle

    _intake(max_pixels, force_anatomy)
    from edgecxr.shared.runtimes import check_options, options_for, parse_options

    opts = parse_options(option)
    if ov_precision:
        opts["inference_precision"] = ov_precision
    subjects = [subject_from_bundle(b) for b in bundles or []]  # verify all before running any
    if torch_checkpoint is not None:
        from edgecxr.host.torchref import subject_from_checkpoint

        subjects.append(subject_from_checkpoint(torch_checkpoint))
    if baseline:
        from edgecxr.host.torchref import subject_baseline

        size = subjects[0].preprocess.size if subjects else 224
        subjects.append(subject_baseline(baseline, size))
    if not subjects:
        raise EdgeCXRError("nothing to bench: give bundle folders (or --torch / --baseline)")
    check_options(opts, [s.backend for s in subjects])
    typer.echo(f"{'bundle':<28} {'size MB':>8} {'p50 ms':>8} {'p90 ms':>8} {'img/s':>7} {'AUC':>7} {'drop':>8} {'agree':>6}  runtime")
    for s in subjects:
        cfg = BenchConfig(warmup=warmup, iterations=iterations, time_budget_s=time_budget, batch=batch,
                          extra_batch=extra_batch, threads=threads, max_images=max_images,
                          accuracy=not s.name.startswith("baseline-"), options=options_for(s.backend, opts),
                          floor=floor)
        twin = reference if reference is not None and s.meta.get("bundle") and s.precision != "fp32" else None
        rec = run(s, data, cfg, device, log=info, reference=twin)
        path = None if no_store else store(rec, results)
        print_bench(rec, path)


@app.command()
def report(
    results: Annotated[Path, typer.Option(help="Results folder")] = Path("benchmarks/results"),
    out: Annotated[Path, typer.Option(help="Markdown report to write")] = Path("benchmarks/RESULTS.md"),
):
    """Write benchmarks/RESULTS.md (one table per device) and PNG plots from the results files.

    Example: edgecxr report
    """
    from edgecxr.device.report import report as run_report

    p = run_report(results, out)
    typer.echo(f"wrote {p}")


@app.command()
def gate(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle folders (usually the int8 ones)")],
    data: Annotated[Path | None, typer.Option(help="Labelled images; default: each bundle's reference set")] = None,
    stress: Annotated[Path | None, typer.Option(help="Also judge on this shift stress set (made by `edgecxr data stress`), per corruption, against the fp32 twin")] = None,
    reference: Annotated[list[Path] | None, typer.Option(help="fp32 twin bundle(s) (same checkpoint); default: an fp32 bundle beside each int8 one")] = None,
    max_auc_drop: Annotated[float, typer.Option(help="Largest acceptable AUC drop against the float model")] = 0.005,
    min_agreement: Annotated[float, typer.Option(help="Smallest acceptable label agreement at the threshold")] = 0.98,
    summary: Annotated[Path | None, typer.Option(help="Markdown summary file (default: $GITHUB_STEP_SUMMARY if set)")] = None,
    details: Annotated[Path | None, typer.Option(help="Write every row and probability pair as JSON here (for `edgecxr plot-gate`)")] = None,
    threads: Annotated[int | None, typer.Option(help="Threads per runtime (default: the profile's, capped at the cores here)")] = None,
    expect_fail: Annotated[list[str] | None, typer.Option(help="BACKEND:CORRUPTION known to fail (say which issue tracks it): shown as KNOWN, not failing the gate")] = None,
    near_margin: Annotated[float, typer.Option(help="With --stress: the images whose fp32 probability lies this close to the threshold are the near-threshold set")] = 0.05,
    max_near_flip_rate: Annotated[float, typer.Option(help="With --stress: fail when the near-threshold flip rate is above this (lower end of its 95% Wilson interval)")] = 0.10,
):
    """Fail (exit 1) when quantization costs more than allowed against the float model, on the
    reference images and, with --stress, on every corruption of the shift stress set and on the
    calls near the operating threshold (the flip rate among the stress images whose fp32
    probability lies within --near-margin of it).

    With --data DIR of a site's own labelled images, each int8 bundle is paired with its fp32
    twin on those images (paired by sha256): paired AUC drop with DeLong p, agreement, flipped files.

    Examples:
      edgecxr gate dist/rpi4-int8 dist/nuc-int8 dist/jetson-orin-nano-int8 --max-auc-drop 0.005
      edgecxr data stress data/kermany224-val --out dist/stress --max-images 300
      edgecxr gate dist/nuc-int8 --stress dist/stress --reference dist/nuc-fp32
      edgecxr gate dist/nuc-int8 --data /site/labelled --reference dist/nuc-fp32
    """
    from edgecxr.device.gate import gate as run_gate

    run_gate(bundles, data, max_auc_drop, min_agreement, summary, log=typer.echo, stress=stress,
             references=reference, details=details, threads=threads, expect_fail=expect_fail,
             near_margin=near_margin, max_near_flip_rate=max_near_flip_rate)


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder")],
    key: Annotated[list[Path] | None, typer.Option(help="Demand a signature by this public key (repeatable); "
                                                   "default: the trusted keys of this machine, if any")] = None,
    expect: Annotated[str | None, typer.Option(help="Demand this bundle digest (sha256:..., as printed here)")] = None,
):
    """Check a bundle's manifest and the sha256 of every file; with trusted keys, its signature.

    Example: edgecxr verify dist/rpi4-int8 --key clinic.pub
    """
    from edgecxr.device.bundle import verify as run_verify

    b = run_verify(bundle, keys=key, expect=expect)
    typer.echo(f"{bundle}: OK ({b.manifest['target']}, {b.manifest['backend']}, {b.manifest['precision']}, "
               f"{len(b.manifest['files'])} file(s) verified), digest {b.trust.digest}")
    typer.echo(f"{bundle}: {b.trust.describe()}")


@app.command()
def unpack(
    archive: Annotated[Path, typer.Argument(help="Bundle archive (.tar)")],
    dest: Annotated[Path, typer.Option(help="Folder to install bundles into")] = Path("bundles"),
    force: Annotated[bool, typer.Option(help="Replace an installed bundle of the same name")] = False,
):
    """Unpack and verify a bundle archive on the board (nothing is installed unless it verifies).

    Example: edgecxr unpack rpi4-int8.tar --dest ~/bundles
    """
    from edgecxr.device.bundle import unpack as run_unpack

    b = run_unpack(archive, dest, force)
    typer.echo(f"installed {b.path}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder")],
    images: Annotated[list[Path], typer.Argument(help="X-ray files (JPEG, PNG, DICOM)")],
    threads: Annotated[int | None, typer.Option(help="Threads")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines")] = False,
    expect: Annotated[str | None, typer.Option(help="Refuse the bundle unless its digest is this (sha256:...)")] = None,
    max_pixels: MaxPixelsOption = None,
    force_anatomy: ForceAnatomyOption = False,
    explain: Annotated[Path | None, typer.Option(help="Also write occlusion heatmaps here (PNG per image, index.html); see `edgecxr explain`")] = None,
):
    """Classify X-rays with a bundle: probability of pneumonia and the call at the bundle's threshold.

    Example: edgecxr predict dist/rpi4-int8 scan1.dcm scan2.jpeg
    """
    if explain is not None:
        from edgecxr.cli.explain import explain_predict

        _intake(max_pixels, force_anatomy)
        return explain_predict(bundle, images, explain, threads, json_out)
    from edgecxr.device.predict import format_rows
    from edgecxr.device.predict import predict as run_predict

    _intake(max_pixels, force_anatomy)
    rows = run_predict(bundle, images, threads, expect=expect)
    for line in format_rows(rows, json_out):
        typer.echo(line)
    if any(r.get("error") for r in rows):
        raise typer.Exit(2)


# ---------------------------------------------------------------- workflows
@app.command()
def demo(
    device: Annotated[str | None, typer.Option(help="Device name for the results file")] = None,
    iterations: Annotated[int, typer.Option(help="Timed iterations per bundle")] = 100,
    baseline: Annotated[str, typer.Option(help="Heavy baseline to time beside ours ('' for none)")] = "densenet121",
):
    """The main job: export the shipped reference model to every target in int8 and fp32, bench
    each on the shipped validation images, write benchmarks/RESULTS.md, run the gate, print one table.

    Example: edgecxr demo
    """
    from edgecxr.host.workflows import demo as run_demo

    raise typer.Exit(run_demo(device=device, iterations=iterations, baseline=baseline or None, log=typer.echo))


@app.command()
def pipeline(
    source: Annotated[Path, typer.Argument(help="ROOT with NORMAL/ and PNEUMONIA/ (or a MedMNIST .npz)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Working folder (steps already done are reused)")] = Path("runs/pipeline"),
    quick: Annotated[bool, typer.Option(help="Tiny settings (64 px, width 0.35, 6 epochs, prune fine-tune 2): about 3 minutes on 2 cores")] = False,
    size: Annotated[int, typer.Option(help="Input size")] = 224,
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 30,
    prune_ratio: Annotated[float, typer.Option(help="Channel pruning ratio (0 = no pruning)")] = 0.5,
    finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after pruning")] = 3,
    recipe: Annotated[str, typer.Option(help="Training recipe (see `edgecxr train --help`)")] = _td("recipe"),
    threshold: Annotated[str, typer.Option(help="Operating threshold rule on validation: sens=0.95 | youden")] = _td("threshold_rule"),
    train_device: Annotated[str, typer.Option(help="Training device: auto | cpu | cuda")] = "auto",
):
    """The full pipeline from raw images: split, calibration set, train, prune, export, bench, report, gate.

    Example: edgecxr pipeline ../shared/data/kermany224/train --quick --out runs/quick
    """
    from edgecxr.host.workflows import pipeline as run_pipeline

    raise typer.Exit(run_pipeline(source, out, quick, size, epochs, prune_ratio, finetune_epochs, log=typer.echo,
                                  recipe=recipe, threshold=threshold, train_device=train_device))


from edgecxr.cli.explain import register as _register_explain  # noqa: E402
from edgecxr.cli.link import register as _register_link  # noqa: E402
from edgecxr.cli.prune import register as _register_prune  # noqa: E402
from edgecxr.cli.serve import register as _register_serve  # noqa: E402
from edgecxr.cli.sign import register as _register_sign  # noqa: E402

_register_prune(app)
_register_sign(app)
_register_link(app)
_register_explain(app)
_register_serve(app)


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C into exit 130 without a word
            err("interrupted; finished results are kept, nothing half-written was saved")
        raise
    except EdgeCXRError as e:
        err(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err("interrupted; finished results are kept, nothing half-written was saved")
        sys.exit(130)


if __name__ == "__main__":
    main()
