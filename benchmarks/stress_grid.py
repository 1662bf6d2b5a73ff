"""Picture of the shift stress set: one real pneumonia X-ray under every corruption and severity.

    .venv/bin/python benchmarks/stress_grid.py [--image PATH] [--seed 0] [--out benchmarks/plots/stress-grid.png]

Rows: corruptions; columns: the original, then severities 1-3, each made exactly as
`edgecxr data stress` makes it (same seeded per-image generator).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = ROOT / "tests" / "data" / "kermany_mini" / "PNEUMONIA" / "person1181_bacteria_3129.jpeg"


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecxr.shared.fsutil import sha256_file
    from edgecxr.shared.imageio import load_grey
    from edgecxr.shared.stress import CORRUPTIONS, PARAMS, SEVERITIES, corrupt, image_rng

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "plots" / "stress-grid.png")
    args = ap.parse_args()
    img = args.image
    if img is None:
        img = DEFAULT_IMAGE if DEFAULT_IMAGE.exists() else sorted((DEFAULT_IMAGE.parent).glob("*"))[0]
    grey, sha = load_grey(img), sha256_file(img)

    rows, cols = len(CORRUPTIONS), 1 + len(SEVERITIES)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.2), squeeze=False)
    for r, name in enumerate(CORRUPTIONS):
        spec = {k: v for k, v in PARAMS[name].items() if k != "what"}
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_ylabel(name, fontsize=10)
                if r == 0:
                    ax.set_title("original", fontsize=9)
                continue
            s = SEVERITIES[c - 1]
            out = corrupt(grey, name, s, image_rng(args.seed, sha, name, s))
            ax.imshow(out, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            params = ", ".join(f"{k} {v[s - 1]:g}" for k, v in spec.items())
            ax.set_title(f"s{s}: {params}", fontsize=7)
    fig.suptitle(f"edgecxr shift stress set (recipe v1, seed {args.seed}): {img.name}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    from PIL import Image

    buf.seek(0)
    with Image.open(buf) as im:  # the picture is grey: an 8-bit grey PNG is a third of the size
        im.convert("L").save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
