"""`edgecxr serve` on an install without the serve extra: one line saying what to install, no traceback.

The child Python hides the module the way a missing one looks (an import finder that answers
ModuleNotFoundError for it and its submodules), then runs the real entry point of pyproject's
[project.scripts] (edgecxr.cli:main)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.serve.harness import free_port

HIDE = """
import sys
from importlib.abc import MetaPathFinder

class Missing(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {mod!r} or name.startswith({mod!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
sys.argv = ["edgecxr", *{args!r}]
from edgecxr.cli import main
main()
"""


@pytest.mark.parametrize("mod", ["pynetdicom", "highdicom"])
def test_serve_without_the_serve_extra_says_so_in_one_line(mod, bundles, tmp_path):
    args = ["serve", str(bundles["jetson-int8"]), "--dicom-port", str(free_port()), "--spool", str(tmp_path / "spool"),
            "--allow-unsigned"]
    p = subprocess.run([sys.executable, "-c", HIDE.format(mod=mod, args=args)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("edgecxr: error:")]
    assert len(lines) == 1, p.stderr
    assert "edgecxr[serve]" in lines[0] and f"No module named '{mod}'" in lines[0], lines[0]
    assert not (tmp_path / "spool").exists()  # nothing was started
