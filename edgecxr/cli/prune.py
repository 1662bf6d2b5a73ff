"""``edgecxr prune``: structured channel pruning of a trained checkpoint (host side).

Wired into the main app with ``from .cli_prune import register; register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``prune`` command to ``app``."""

    @app.command()
    def prune(
        checkpoint: Annotated[Path, typer.Argument(help="Trained checkpoint (best.pt)")],
        ratio: Annotated[float, typer.Option(help="Fraction of the channels to remove, in (0, 1): 0.5 removes half")],
        split: Annotated[Path, typer.Option(help="Split manifest: fine-tune on its training part, measure on validation")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (best.pt, prune.json, curves.png)")],
        steps: Annotated[int, typer.Option(help="Iterative pruning steps (ratio/steps each, fine-tuned after each)")] = 1,
        finetune_epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after each step (0 = none)")] = 3,
        importance: Annotated[str, typer.Option(help="Channel importance: magnitude (L2) | taylor (|w x grad|)")] = "magnitude",
        size: Annotated[int | None, typer.Option(help="Input size in pixels (default: the checkpoint's)")] = None,
        lr: Annotated[float, typer.Option(help="Adam learning rate for fine-tuning (cosine-annealed)")] = 1e-3,
        batch_size: Annotated[int, typer.Option(help="Fine-tuning batch size")] = 32,
        round_to: Annotated[int, typer.Option(help="Keep channel counts multiples of this")] = 8,
        bn_images: Annotated[int, typer.Option(help="Training images to re-estimate batch-norm statistics on after each step (0 = off)")] = 256,
        seed: Annotated[int, typer.Option(help="Random seed")] = 0,
        threads: Annotated[int, typer.Option(help="Torch threads (0 = all cores)")] = 0,
        max_train: Annotated[int, typer.Option(help="Cap on fine-tuning images, stratified (0 = all)")] = 0,
        max_val: Annotated[int, typer.Option(help="Cap on validation images, stratified (0 = all)")] = 0,
        force: Annotated[bool, typer.Option(help="Replace an existing output folder")] = False,
    ):
        """Prune MobileNetV2 channels (torch-pruning dependency graph), fine-tune, and report before/after.

        Residual adds and depthwise convs are pruned consistently; channel counts stay multiples of 8.

        Writes OUT/best.pt (loads and exports like any checkpoint), OUT/prune.json (before/after: parameters, MACs, fp32 size, validation AUC and accuracy) and OUT/curves.png.

        Example: edgecxr prune runs/mnv2/best.pt --ratio 0.5 --finetune-epochs 3 --split splits/kermany224.json --out runs/pruned
        """
        from edgecxr.host.prune import prune_checkpoint

        def info(msg: str) -> None:
            typer.echo(msg, err=True)

        rec = prune_checkpoint(checkpoint, out, ratio, steps=steps, importance=importance.strip().lower(),
                               finetune_epochs=finetune_epochs, split=split, round_to=round_to, size=size, lr=lr,
                               seed=seed, batch_size=batch_size, threads=threads, max_train=max_train,
                               max_val=max_val, bn_images=bn_images, force=force, show_progress=True, log=info)
        r = rec["reduction"]
        typer.echo(f"pruned checkpoint: {rec['checkpoint']}  (parameters x{r['params']:.3f}, MACs x{r['macs']:.3f}, "
                   f"val AUC {rec['after']['val']['auc']:.4f} ({r['val_auc_change']:+.4f}), "
                   f"accuracy {rec['after']['val']['accuracy']:.4f})")
