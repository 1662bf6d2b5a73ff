"""Shared fixtures: real X-rays shipped in tests/data, a real tiny model, real runtimes.

tests/data/kermany_mini: 32 NORMAL + 32 PNEUMONIA images from the validation part of
splits/kermany224.json (Kermany et al. 2018, CC BY 4.0); tests/data/tiny64.pt: a
MobileNetV2 (width 0.35, 64 px) trained on the training part with `edgecxr train`
(see tests/data/README.md); tests/data/calib_mini: a calibration set from the training part.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
MINI = DATA / "kermany_mini"
CALIB = DATA / "calib_mini"
TINY = DATA / "tiny64.pt"
FULLRES = DATA / "fullres"
NPZ = DATA / "pneumoniamnist_mini.npz"
SHARED = ROOT.parent / "shared" / "data"

os.environ.setdefault("EDGECXR_TARGETS", str(ROOT / "targets"))
# A suite started in the background by a non-interactive shell (`cmd &`, nohup, some CI runners)
# inherits SIGINT ignored, and so would every `edgecxr` it starts: the Ctrl-C tests could never stop
# theirs. A handler here is reset to the default across exec, so the children see Ctrl-C again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# the suite's bundles are unsigned: the developer's own trusted keys must not apply to them (the
# signing tests set their own). A fresh, empty config folder for this session and its subprocesses.
os.environ.pop("EDGECXR_TRUSTED_KEYS", None)
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="edgecxr-test-config-")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `edgecxr` command line in a subprocess."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgecxr", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("edgecxr: error:")]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]


TARGETS = ("rpi", "nuc", "jetson")
BUNDLE_NAMES = {"rpi": "rpi4", "nuc": "nuc", "jetson": "jetson-orin-nano"}


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """All three targets in int8 and fp32, exported from the real tiny model (about a minute)."""
    from edgecxr.host.export import export_bundle, load_eval_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig

    out = tmp_path_factory.mktemp("dist")
    pp = PreprocessConfig.from_dict(read_checkpoint(TINY)["preprocess"])
    ev = load_eval_set(pp, None, MINI)
    res = {}
    for t in TARGETS:
        for prec in ("int8", "fp32"):
            s = export_bundle(TINY, t, prec, out, data=MINI, calibration=CALIB, log=lambda *_: None, eval_set=ev)
            res[f"{t}-{prec}"] = Path(s["bundle"])
    return res


@pytest.fixture()
def bundle_copy(bundles, tmp_path):
    def copy(key: str) -> Path:
        dst = tmp_path / bundles[key].name
        shutil.copytree(bundles[key], dst)
        return dst

    return copy
