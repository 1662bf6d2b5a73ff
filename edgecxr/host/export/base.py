"""What a converter returns, and how its noise is kept off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecxr.device.bundle import IOSpec


@dataclass
class Converted:
    model_file: str
    files: list[str]
    input: IOSpec
    output: IOSpec
    converter: dict[str, str]
    details: dict[str, Any] = field(default_factory=dict)


def spread(items: list, n: int) -> list:
    """``n`` items (all when fewer) evenly spaced over ``items``, first and last included, so a
    calibration set sorted by class gives both classes (the images bias correction is fitted on)."""
    import numpy as np

    return [items[int(j)] for j in np.linspace(0, len(items) - 1, min(len(items), n))]


@contextlib.contextmanager
def converter_output() -> Iterator[Path | None]:
    """Send everything a converter prints to a log file instead of the terminal; yield its path.

    Converters (litert-torch with absl and MLIR, NNCF, torch.jit) print warnings from C++ and
    Python that say nothing to a user exporting a model, some of them alarming (``os.fork() ...
    deadlock``). File descriptors 1 and 2 are redirected, which catches both. The caller keeps the
    log when the conversion fails and deletes it otherwise. ``EDGECXR_VERBOSE=1`` leaves the
    terminal alone.
    """
    if os.environ.get("EDGECXR_VERBOSE"):
        yield None
        return
    fd, name = tempfile.mkstemp(prefix="edgecxr-convert-", suffix=".log")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = (os.dup(1), os.dup(2))
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield Path(name)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
