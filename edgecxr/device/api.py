"""The device side as a Python library, for software that embeds it (a hospital viewer, a kiosk).

    from edgecxr.device.api import open_bundle

    model = open_bundle("dist/rpi4-int8")        # verifies every file, then loads the runtime
    r = model.predict_file("chest.dcm")                   # DICOM, PNG, JPEG...
    print(r.label, r.prob, r.threshold)
    r = model.predict_array(grey)                         # a 2-D grey image (uint8, or float in 0..255)

The results are those of ``edgecxr predict`` (which is built on this class). Bad input raises
:class:`edgecxr.shared.errors.EdgeCXRError` (``str(err)`` is the one line the CLI prints).
No torch is imported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.device.backends import open_backend
from edgecxr.device.bundle import Bundle, verify
from edgecxr.shared.errors import ImageReadError
from edgecxr.shared.imageio import load_grey
from edgecxr.shared.metrics import softmax_pos
from edgecxr.shared.preprocess import preprocess_grey


@dataclass(frozen=True)
class Reading:
    prob: float  # probability of the positive label (pneumonia), as calibrated by the bundle
    label: str  # the bundle's call at its threshold
    threshold: float
    bundle: str
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k != "file"}


class Model:
    """A verified bundle with its runtime loaded. ``threads`` None: the runtime's default; ``expect``:
    refuse the bundle unless its digest is this (sha256:..., as `edgecxr verify` prints it). With
    trusted keys configured (see README, signed bundles) an unsigned bundle is refused here too."""

    def __init__(self, bundle: str | Path | Bundle, threads: int | None = None, expect: str | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else verify(bundle, expect=expect)
        self.backend = open_backend(self.bundle, threads)
        self.preprocess = self.bundle.preprocess
        self.threshold = float(self.bundle.threshold)
        self.labels = list(self.bundle.manifest["labels"])

    @property
    def name(self) -> str:
        return self.bundle.name

    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {"bundle": self.name, "target": m["target"], "backend": m["backend"], "precision": m["precision"],
                "threshold": self.threshold, "labels": self.labels, "runtime": self.backend.info().to_dict()}

    def probabilities(self, greys: list[np.ndarray]) -> np.ndarray:
        """Positive-class probabilities of 2-D grey images, one batch through the runtime."""
        if not greys:
            return np.zeros(0, dtype=np.float64)
        x = np.stack([preprocess_grey(np.asarray(g), self.preprocess) for g in greys])
        return softmax_pos(self.backend.infer(x)).astype(np.float64)

    def _reading(self, p: float, file: str | None) -> Reading:
        return Reading(float(p), self.labels[int(p >= self.threshold)], self.threshold, self.name, file)

    def predict_array(self, grey: np.ndarray) -> Reading:
        grey = np.asarray(grey)
        if grey.ndim != 2 or min(grey.shape) < 1:
            raise ImageReadError(f"expected a 2-D grey image, got an array of shape {grey.shape}")
        return self._reading(float(self.probabilities([grey])[0]), None)

    def predict_file(self, path: str | Path) -> Reading:
        return self._reading(float(self.probabilities([load_grey(path)])[0]), str(path))

    def predict_files(self, paths: list[str | Path]) -> list[Reading | ImageReadError]:
        """One result per file, in order: a Reading, or the ImageReadError that file raised."""
        out: list[Reading | ImageReadError] = []
        for f in paths:
            try:
                out.append(self.predict_file(f))
            except ImageReadError as e:
                out.append(e)
        return out


def open_bundle(bundle: str | Path, threads: int | None = None, expect: str | None = None) -> Model:
    """Verify a bundle folder and load its runtime (raises EdgeCXRError with one line on bad input)."""
    return Model(bundle, threads, expect)
