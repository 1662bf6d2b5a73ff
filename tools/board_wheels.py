"""Build the folder of wheels a board installs from with no index (no network on the board).

    python tools/board_wheels.py rpi4 [nuc jetson-orin-nano ...] --out dist/board-wheels/rpi4

Builds the edgecxr wheel from this working tree and downloads, for the boards' platform and Python
(`pip download --platform manylinux_2_17..36_<arch> --python-version 3.11 --only-binary=:all:`), every
device-side dependency of the targets' extras (targets/<name>.toml: backend litert -> [rpi],
openvino -> [nuc], onnxruntime -> [jetson]) pinned by constraints-board.txt and pyproject.toml.
On the board:

    python3 -m venv ~/edgecxr
    ~/edgecxr/bin/pip install --no-index --find-links WHEELS "WHEELS/edgecxr-*.whl[$(cat WHEELS/EXTRAS)]"

The folder is written whole or not at all (a temporary folder renamed into place).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
EXTRA = {"litert": "rpi", "openvino": "nuc", "onnxruntime": "jetson"}
# glibc of Debian 12 bookworm (Raspberry Pi OS 12) is 2.36; pip also accepts every older manylinux tag
GLIBC = 36


def fail(msg: str) -> None:
    print(f"board-wheels: error: {msg}", file=sys.stderr)
    sys.exit(2)


def extras_for(names: list[str]) -> tuple[list[str], str]:
    extras, archs = [], set()
    for n in names:
        hits = [p for p in (ROOT / "targets").glob("*.toml")
                if n == p.stem or n in tomllib.loads(p.read_text()).get("aliases", [])]
        if not hits:
            fail(f"targets/{n}.toml: no such target")
        t = tomllib.loads(hits[0].read_text())
        e = EXTRA.get(t["backend"])
        if e is None:
            fail(f"{hits[0]}: backend {t['backend']!r} has no device-side extra")
        if e not in extras:
            extras.append(e)
        archs.add(t.get("arch", "aarch64"))
    return extras, archs.pop() if len(archs) == 1 else "aarch64"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="+", help="target names or aliases (targets/*.toml), or 'all'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--arch", help="aarch64 or x86_64 (default: the targets' own)")
    ap.add_argument("--python-version", default="3.11")
    ap.add_argument("--constraints", type=Path, default=ROOT / "constraints-board.txt")
    a = ap.parse_args()
    names = ["rpi4", "nuc", "jetson-orin-nano"] if a.targets == ["all"] else a.targets
    extras, arch = extras_for(names)
    extras.append("serve")  # every board can be a clinic node (edgecxr serve); no torch in it either
    arch = a.arch or arch
    out = a.out.resolve()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp), str(ROOT)], check=True)
    # setuptools leaves build/ behind in the tree
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    whl = next(tmp.glob("edgecxr-*.whl"))
    py = a.python_version.replace(".", "")
    # pip does not widen --platform to older manylinux tags: name every one up to bookworm's glibc
    plats = [f"manylinux2014_{arch}"] + [f"manylinux_2_{m}_{arch}" for m in range(17, GLIBC + 1)]
    subprocess.run([*pip, "download", "-q", "--only-binary=:all:", *(x for p in plats for x in ("--platform", p)),
                    "--python-version", a.python_version, "--implementation", "cp", "--abi", f"cp{py}",
                    "-c", str(a.constraints), "-d", str(tmp), f"{whl}[{','.join(extras)}]"], check=True)
    (tmp / "EXTRAS").write_text(",".join(extras) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    n = len(list(out.glob("*.whl")))
    mb = sum(p.stat().st_size for p in out.glob("*.whl")) / 1e6
    print(f"{out}: {n} wheels, {mb:.0f} MB, extras [{','.join(extras)}], manylinux_2_{GLIBC}_{arch}, Python {a.python_version}")


if __name__ == "__main__":
    main()
