"""``edgecxr explain``: heatmaps of where the model looks.

A bundle folder runs occlusion through the bundle's own runtime (device side, no torch); a
checkpoint (.pt) runs Grad-CAM in PyTorch (host side). Wired into the main app with
``from .cli_explain import register; register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgecxr.shared.errors import EdgeCXRError

GRID_HELP = "Occlusion grid: the window moves in steps of size/GRID (14: 13 x 13 windows of 32 px at 224 px)"
WINDOW_HELP = "Occlusion window side, in grid steps"
BATCH_HELP = "Occluded copies per runtime call"
BUDGET_HELP = "Seconds per image: coarsen the grid to fit (0 = no limit)"


def occlusion_config(grid: int, window: int, batch: int, budget: float, fill: str = "mean"):
    from edgecxr.device.explain import OcclusionConfig

    return OcclusionConfig(grid=grid, window=window, batch=batch, budget_s=budget, fill=fill)


def finish(summary: dict[str, Any], json_out: bool, echo=typer.echo) -> None:
    """Print JSON rows (if asked), the summary lines; exit 2 naming the first bad file if any were skipped."""
    rows = summary["rows"]
    if json_out:
        for r in rows:
            echo(json.dumps(r))
    ok = [r for r in rows if not r.get("error")]
    bad = [r for r in rows if r.get("error")]
    if ok:
        echo(f"wrote {summary['out']}/index.html: {len(ok)} heatmap(s), {summary['seconds_per_image']:.2f} s per image "
             f"({summary['model']}, {summary['backend']} {summary['precision']}, {summary['method']})", err=json_out)
    cs = summary.get("central_share_median") or {}
    if cs:
        echo("share of the evidence in the central 60% x 60% box, median per call: "
             + ", ".join(f"{k} {v:.2f}" for k, v in cs.items()), err=json_out)
    cmp = summary.get("compare")
    if cmp and cmp["r"].get("n"):
        d = cmp["r"]
        echo(f"heatmap correlation against {summary['reference']['model']}: n={d['n']} median r {d['median']:.3f}  "
             f"p10 {d['p10']:.3f}  min {d['min']:.3f}  top-10% IoU median {cmp['top10_iou']['median']:.3f}  "
             f"flagged {cmp['n_flagged']} (r < {cmp['min_corr']}, flat, or another call)", err=json_out)
        for p in summary["pairs"]:
            if p["flag"]:
                echo(f"  flagged {p['file']}: {p['why']}", err=json_out)
    if bad:
        more = f" ({len(bad)} of {len(rows)} files skipped; the others are in {summary['out']})"
        raise EdgeCXRError(bad[0]["error"] + more, bad[0]["file"])


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to ``app``."""

    @app.command()
    def explain(
        model: Annotated[Path, typer.Argument(help="Bundle folder (occlusion, on the board) or checkpoint .pt (Grad-CAM, host)")],
        images: Annotated[list[Path], typer.Argument(help="X-ray files (JPEG, PNG, DICOM) or folders of them")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one PNG per image, index.html, explain.json")],
        method: Annotated[str | None, typer.Option(help="For a checkpoint: gradcam (default) | occlusion. A bundle: occlusion")] = None,
        grid: Annotated[int, typer.Option(help=GRID_HELP)] = 14,
        window: Annotated[int, typer.Option(help=WINDOW_HELP)] = 2,
        batch: Annotated[int, typer.Option(help=BATCH_HELP)] = 16,
        budget: Annotated[float, typer.Option(help=BUDGET_HELP)] = 0.0,
        fill: Annotated[str, typer.Option(help="What an occlusion window shows: mean (the image's mean grey) | blur (the image blurred: detail gone, brightness kept)")] = "mean",
        compare: Annotated[Path | None, typer.Option(help="fp32 twin bundle: also explain there, per-image heatmap correlation, flag disagreements")] = None,
        min_corr: Annotated[float, typer.Option(help="With --compare: flag images whose heatmap correlation is below this")] = 0.5,
        max_images: Annotated[int, typer.Option(help="At most this many images, evenly spaced over the sorted list (0 = all)")] = 0,
        threads: Annotated[int | None, typer.Option(help="Runtime threads")] = None,
        force: Annotated[bool, typer.Option(help="Replace an existing, non-empty output folder")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON record per image")] = False,
    ):
        """Heatmaps of where the model looks, over each radiograph at its own aspect ratio, with the
        probability, call and threshold written on it, and one static HTML page with all of them.

        A bundle: occlusion sensitivity through the bundle's own runtime (any backend, int8 or fp32,
        no torch). A checkpoint (.pt): Grad-CAM on MobileNetV2's last convolutional block (PyTorch).

        Examples:
          edgecxr explain dist/rpi4-int8 scan1.dcm scan2.jpeg --out heat/
          edgecxr explain dist/nuc-int8 data/kermany224-val --compare dist/nuc-fp32 --max-images 100 --out heat-nuc/
          edgecxr explain models/mnv2-ref.pt scan1.jpeg --out heat-host/
        """
        log = None if json_out else typer.echo
        if model.is_dir():
            if method not in (None, "occlusion"):
                raise EdgeCXRError(f"--method {method}: a bundle is explained by occlusion (its runtime has no gradients)")
            from edgecxr.device.explain import run_explain

            s = run_explain(model, images, out, occlusion_config(grid, window, batch, budget, fill), threads=threads,
                            force=force, max_images=max_images, compare=compare, min_corr=min_corr, log=log)
        elif model.suffix == ".pt" or model.suffix == ".pth":
            if compare is not None:
                raise EdgeCXRError("--compare pairs two bundles (int8 and its fp32 twin); give a bundle folder")
            from edgecxr.host.explain_host import run_host_explain

            s = run_host_explain(model, images, out, method or "gradcam", occlusion_config(grid, window, batch, budget, fill),
                                 threads=threads, force=force, max_images=max_images, log=log)
        elif not model.exists():
            raise EdgeCXRError("not found (give a bundle folder or a checkpoint .pt)", model)
        else:
            raise EdgeCXRError("neither a bundle folder nor a checkpoint .pt", model)
        finish(s, json_out)


def explain_predict(bundle: Path, images: list[Path], out: Path, threads: int | None, json_out: bool,
                    force: bool = False) -> None:
    """`edgecxr predict BUNDLE ... --explain DIR`: predict's lines, each with its heatmap (default occlusion grid)."""
    from edgecxr.device.explain import OcclusionConfig, run_explain

    s = run_explain(bundle, images, out, OcclusionConfig(), threads=threads, force=force,
                    log=None if json_out else typer.echo)
    finish(s, json_out)
