"""``edgecxr export``: checkpoint -> self-describing bundle for one board (host side).

1. Load the checkpoint, the target profile and the evaluation images
   (validation part of the split, or a labelled folder).
2. Float reference: run the PyTorch model on them (numpy preprocessing).
3. Convert with the target's converter (int8: calibrated on the calibration
   set, which must not overlap the evaluation images).
4. Load the new artifact in its own runtime (the device-side backend), run it
   on the same images and compare with the float model.
5. Write manifest.json, verify the bundle, then move it into place and pack
   one archive.  Nothing is written under the final name until all of this
   passed; an existing bundle is replaced only with ``force``.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr import LABELS, __version__
from edgecxr.device.bundle import KIND, SCHEMA, file_table, pack, verify, write_manifest
from edgecxr.host.export.base import converter_output
from edgecxr.shared.errors import BundleError, DataError, EdgeCXRError
from edgecxr.shared.fsutil import atomic_dir
from edgecxr.shared.intake import INTENSITY
from edgecxr.shared.metrics import binary_metrics, delong_paired, roc_auc, softmax_pos, summarize
from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey
from edgecxr.shared.runtimes import RUNTIMES
from edgecxr.shared.targets import Target, get_target

CONVERTERS = {n: r.converter for n, r in RUNTIMES.items() if r.converter}  # from the runtime registry


@dataclass
class EvalSet:
    source: str
    shas: list[str]
    labels: np.ndarray
    paths: list[str]
    x: np.ndarray  # N x C x H x W preprocessed
    hint: dict[str, str | None] | None = None  # where a board finds these images again
    float_cache: dict[str, np.ndarray] | None = None  # checkpoint sha256 -> float probabilities


def load_eval_set(pp: PreprocessConfig, split: str | Path | None, data: str | Path | None) -> EvalSet:
    from edgecxr.shared.data import SplitManifest, load_preprocessed, scan

    if split is not None:
        sm = SplitManifest.read(split)
        items, root = sm.subset("val"), sm.root
        source = f"validation split of {split}"
    elif data is not None:
        ds = scan(data)
        items, root = ds.items, ds.root
        source = str(data)
    else:
        raise EdgeCXRError("no evaluation images: pass --split (its validation part) or --data DIR")
    if not items:
        raise DataError("no evaluation images", split or data)
    x = np.stack([load_preprocessed(root, it, pp)[0] for it in items]).astype(np.float32)
    return EvalSet(source, [it.sha256 for it in items], np.array([it.label for it in items]),
                   [it.path for it in items], x,
                   {"split": str(split) if split is not None else None, "data": str(data) if data is not None else None})


def float_logits(model, x: np.ndarray, bs: int = 32) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i:i + bs])).float().numpy()
                               for i in range(0, len(x), bs)])


def reference_logits(model, checkpoint_sha256: str, ev: EvalSet, pp: PreprocessConfig) -> np.ndarray:
    """The PyTorch model's logits on the evaluation set, 16 at a time as bench's ``pytorch-fp32``
    subject computes them, so that inside an image memo (demo, pipeline) that bench reuses them."""
    import json

    import torch

    from edgecxr.host.torchref import torch_identity
    from edgecxr.shared.data import memoised

    key = ("logits", torch_identity(checkpoint_sha256, torch.get_num_threads()), 16,
           (tuple(ev.shas), json.dumps(pp.to_dict(), sort_keys=True)))
    return memoised(key, lambda: float_logits(model, ev.x, bs=16))


def run_backend(backend, x: np.ndarray, bs: int = 32) -> np.ndarray:
    return np.concatenate([backend.infer(x[i:i + bs]) for i in range(0, len(x), bs)])


def compare(y: np.ndarray, p_float: np.ndarray, p_art: np.ndarray, thr: float) -> dict[str, Any]:
    a_f, a_a = roc_auc(y, p_float), roc_auc(y, p_art)
    paired = delong_paired(y, p_float, p_art)
    agree = float(np.mean((p_float >= thr) == (p_art >= thr)))
    diff = np.abs(p_float - p_art)
    return {"n": int(len(y)), "auc_float": a_f, "auc_artifact": a_a, "auc_drop": a_f - a_a,
            "delong_p": paired.p_value, "label_agreement": agree, "mean_abs_prob_diff": float(diff.mean()),
            "max_abs_prob_diff": float(diff.max()),
            "accuracy_float": binary_metrics(y, p_float, thr).accuracy,
            "accuracy_artifact": binary_metrics(y, p_art, thr).accuracy}


def _preflight(tgt: Target, precision: str, sign, final: Path, force: bool) -> None:
    """What can be refused before minutes of conversion: the precision, the backend, the signing key,
    an existing bundle."""
    if precision not in ("fp32", "int8"):
        raise EdgeCXRError(f"unknown precision {precision!r} (fp32 or int8)")
    if precision not in tgt.precisions:
        raise EdgeCXRError(f"target {tgt.name} does not offer {precision} (offers {', '.join(tgt.precisions)})")
    if tgt.backend not in CONVERTERS:
        raise EdgeCXRError(f"no converter for backend {tgt.backend!r}")
    if sign is not None:  # a bad key fails now, not after minutes of conversion
        from edgecxr.device.signing import load_private_key

        load_private_key(sign)
    if final.exists() and not force:
        raise EdgeCXRError("bundle exists; use --force to replace it", final)


def _float_reference(model, meta: dict[str, Any], pp: PreprocessConfig, eval_set: EvalSet | None, split, data,
                     log) -> tuple[EvalSet, np.ndarray]:
    """The evaluation images (given, or from the split or folder) and the PyTorch model's probabilities
    on them, computed once per checkpoint and kept in the set's ``float_cache``."""
    if eval_set is None:
        if split is None and data is None:
            split = (meta.get("train") or {}).get("split")
            if not split or not Path(split).exists():
                raise EdgeCXRError("no evaluation images: pass --split or --data (the checkpoint's split is not here)")
        eval_set = load_eval_set(pp, split, data)
    ev = eval_set
    log(f"float reference: PyTorch on {len(ev.labels)} images ({ev.source})")
    cache = ev.float_cache if ev.float_cache is not None else {}
    if meta["sha256"] not in cache:
        cache[meta["sha256"]] = softmax_pos(reference_logits(model, meta["sha256"], ev, pp))
    ev.float_cache = cache
    return ev, cache[meta["sha256"]]


def _manifest(bundle_name: str, tgt: Target, precision: str, res, pp: PreprocessConfig, thr, meta: dict[str, Any],
              checkpoint, calib_info, model, tmp: Path) -> dict[str, Any]:
    """The bundle's manifest before its export check: what it is, where it came from, its files."""
    return {
        "schema": SCHEMA, "kind": KIND, "name": bundle_name,
        "target": tgt.name, "backend": tgt.backend, "precision": precision,
        "target_profile": tgt.to_dict(),
        "model_file": res.model_file,
        "input": res.input.to_dict(), "output": {**res.output.to_dict(), "kind": "logits"},
        "preprocess": {**pp.to_dict(), "intensity": INTENSITY}, "labels": list(LABELS), "positive_label": LABELS[1],
        "threshold": float(thr), "threshold_rule": meta.get("threshold_rule", "youden"),
        "source": {"checkpoint": str(checkpoint), "checkpoint_sha256": meta["sha256"], "arch": meta.get("arch")},
        "calibration": calib_info,
        "versions": {"edgecxr": __version__, **res.converter, **_torch_versions()},
        "conversion": res.details,
        "compute": model_compute(model, pp.channels, pp.size),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": file_table(tmp, res.files),
    }


def export_bundle(checkpoint: str | Path, target: str | Target, precision: str | None = None,
                  out_root: str | Path = "dist", split: str | Path | None = None, data: str | Path | None = None,
                  calibration: str | Path | None = "calibration/default", force: bool = False,
                  name: str | None = None, log=print, archive: bool = True,
                  eval_set: EvalSet | None = None, quant: str | None = None,
                  calib_stress: int = 0, sign: str | Path | None = None) -> dict[str, Any]:
    from edgecxr.host.model import load_checkpoint

    t0 = time.time()
    tgt = target if isinstance(target, Target) else get_target(target)
    precision = precision or tgt.precision
    bundle_name = name or f"{tgt.name}-{precision}"
    final = Path(out_root) / bundle_name
    _preflight(tgt, precision, sign, final, force)

    model, meta = load_checkpoint(checkpoint)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    thr = meta.get("threshold")
    if thr is None:
        raise EdgeCXRError("checkpoint has no operating threshold (train it to the end, or evaluate it with "
                           "--threshold youden first)", checkpoint)
    if pp.size != tgt.input_size:
        log(f"note: model input is {pp.size}px; profile {tgt.name} suggests {tgt.input_size}px (using {pp.size})")
    ev, p_float = _float_reference(model, meta, pp, eval_set, split, data, log)
    float_metrics = summarize(ev.labels, p_float, thr)

    calib_info = calib_x = recipe = None
    if precision == "int8":
        from edgecxr.host.export.recipes import resolve

        recipe = resolve(quant, tgt.backend, tgt.quant or None)
        calib_x, calib_info = calibration_images(calibration, pp, set(ev.shas), calib_stress, log)

    conv = importlib.import_module(CONVERTERS[tgt.backend])
    with atomic_dir(final, force=True) as tmp:
        res, convert_s = run_converter(conv, tgt, model, pp, calib_x, precision, tmp, recipe, checkpoint, log)
        manifest = _manifest(bundle_name, tgt, precision, res, pp, thr, meta, checkpoint, calib_info, model, tmp)
        write_manifest(tmp, manifest)
        p_art, backend = artifact_probabilities(tmp, final, tgt, ev, pp)
        check = compare(ev.labels, p_float, p_art, float(thr))
        check["runtime"] = backend.info().to_dict()
        manifest["export_check"] = check
        manifest["reference"] = {
            "source": ev.source, "data": ev.hint, "n": int(len(ev.labels)), "model": "PyTorch fp32 (source checkpoint)",
            "float_metrics": float_metrics,
            "images": {sha: {"label": int(lab), "prob": float(p), "path": pth}
                       for sha, lab, p, pth in zip(ev.shas, ev.labels, p_float, ev.paths, strict=True)},
        }
        manifest["export_seconds"] = {"convert": round(convert_s, 2), "total": round(time.time() - t0, 2)}
        write_manifest(tmp, manifest)
        verify(tmp, trust=False)
        if sign is not None:
            from edgecxr.device.signing import sign_bundle

            sign_bundle(tmp, sign)  # checks its own signature before the bundle moves into place
    arch_path = pack(final) if archive else None
    summary = {"bundle": str(final), "archive": str(arch_path) if arch_path else None, "target": tgt.name,
               "backend": tgt.backend, "precision": precision, "recipe": recipe.name if recipe else None,
               "model_bytes": sum(f["bytes"] for f in manifest["files"].values()),
               "export_seconds": round(time.time() - t0, 2), **check}
    return summary


def run_converter(conv, tgt: Target, model, pp: PreprocessConfig, calib_x, precision: str, tmp: Path,
                  recipe, checkpoint, log) -> tuple[Any, float]:
    """The target's converter into ``tmp``, its noise kept in a log that is named only on failure; files
    the converter left beside its own are removed. (result, seconds)."""
    t_conv = time.time()
    log(f"converting for {tgt.name} ({tgt.backend}, {precision}" + (f", recipe {recipe.name}" if recipe else "") + ")")
    try:
        with converter_output() as conv_log:
            res = conv.convert(model, pp.size, pp.channels, calib_x, precision, tmp, recipe)
    except EdgeCXRError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        where = f"; converter log: {conv_log}" if conv_log else ""
        raise EdgeCXRError(f"{tgt.backend} converter failed ({e.__class__.__name__}: {first}){where}",
                           checkpoint) from None
    if conv_log:
        conv_log.unlink(missing_ok=True)
    convert_s = time.time() - t_conv
    for f in tmp.iterdir():
        if f.name not in res.files:
            f.unlink()
    return res, convert_s


def artifact_probabilities(folder: Path, final: Path, tgt: Target, ev: EvalSet, pp: PreprocessConfig):
    """The new bundle in ``folder`` loaded in its own runtime (the device-side backend) and run on the
    evaluation images: (P(PNEUMONIA), the backend). With the threads bench gives it (the profile's,
    capped at this machine's cores) and 16 at a time as bench runs it, so that inside an image memo
    (demo, pipeline) bench and gate reuse these logits. Errors name ``final``, the bundle's own name."""
    import json
    import os

    from edgecxr.device.backends import infer_all, open_backend

    try:
        b = verify(folder, trust=False)
        cores = os.cpu_count() or 1
        backend = open_backend(b, min(tgt.threads or cores, cores))
        logits = infer_all(backend, ev.x, (tuple(ev.shas), json.dumps(pp.to_dict(), sort_keys=True)))
    except BundleError as e:
        raise BundleError(f"exported artifact does not load or run: {e.message}", final) from None
    except Exception as e:
        raise BundleError(f"exported artifact does not run ({e.__class__.__name__}: {e})", final) from None
    p_art = softmax_pos(logits)
    if not np.all(np.isfinite(p_art)):
        raise BundleError("exported artifact produced non-finite outputs", final)
    return p_art, backend


def calibration_images(calibration: str | Path | None, pp: PreprocessConfig, forbid: set[str],
                       calib_stress: int = 0, log=print) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The calibration set's images, preprocessed (none of them an evaluation image, ``forbid``), with
    ``calib_stress`` one seeded stress corruption of each added; and the set's summary for the manifest."""
    from edgecxr.host.calibrate import load_calibration_set

    if calibration is None:
        raise EdgeCXRError("int8 export needs a calibration set (--calibration DIR)")
    cs = load_calibration_set(calibration, forbid_sha256=forbid)
    calib_x = [preprocess_grey(g, pp) for g in cs.greys]
    calib_info = cs.summary()
    if calib_stress:
        # one seeded stress corruption per calibration image (training images: nothing leaks
        # from the validation stress set), added to the clean ones
        from edgecxr.shared.stress import CORRUPTIONS, corrupt, image_rng

        names = sorted(CORRUPTIONS)
        shas = [it["sha256"] for it in cs.manifest["items"]]
        for i, (g, sha) in enumerate(zip(cs.greys, shas, strict=True)):
            c, sev = names[i % len(names)], 1 + (i // len(names)) % 3
            calib_x.append(preprocess_grey(corrupt(g, c, sev, image_rng(1000 + calib_stress, sha, c, sev)), pp))
        calib_info["stress_augmented"] = {"copies": len(cs.greys), "seed": 1000 + calib_stress,
                                          "rule": "image i: corruption i mod 10 (sorted names), severity "
                                                  "1 + (i div 10) mod 3"}
    log(f"calibration: {len(calib_x)} images from {calibration} (sha256 {cs.sha256[:12]})"
        + (" incl. stress-corrupted copies" if calib_stress else ""))
    return calib_x, calib_info


def model_compute(model, channels: int, size: int) -> dict[str, Any]:
    """FLOPs of one image through the float model (torch's own counter: convolutions and matmuls,
    2 per multiply-accumulate), for the report's latency-against-compute-floor ratios."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.eval()(torch.zeros(1, channels, size, size))
    flops = int(fc.get_total_flops())
    return {"flops": flops, "macs": flops // 2, "input": [1, channels, size, size],
            "counted_by": f"torch.utils.flop_counter (torch {torch.__version__})"}


def _torch_versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__}
