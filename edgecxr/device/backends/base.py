"""The backend interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.device.bundle import IOSpec
from edgecxr.shared.errors import BundleError
from edgecxr.shared.preprocess import PreprocessConfig


@dataclass
class BackendInfo:
    backend: str
    runtime: str  # package actually imported
    runtime_version: str
    threads: int | None
    device: str  # execution provider / plugin / delegate actually used
    precision: str  # what the runtime reports it executes in
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(ABC):
    name = "base"

    def __init__(self, model_path: str | Path, input_spec: IOSpec, output_spec: IOSpec,
                 threads: int | None = None, options: dict[str, Any] | None = None):
        self.model_path = Path(model_path)
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.threads = threads
        self.options = options or {}
        self.notes: list[str] = []
        # set by open_backend: (model sha256, backend, options, threads), what decides the outputs
        self.identity: tuple | None = None

    @abstractmethod
    def load(self) -> None:
        """Load/compile the model; raise BundleError with one line on failure."""

    @abstractmethod
    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """Run one already-encoded batch; return the raw output array."""

    @abstractmethod
    def info(self) -> BackendInfo: ...

    def infer(self, batch_nchw: np.ndarray) -> np.ndarray:
        """Preprocessed float NCHW batch -> float logits N x 2."""
        x = self.input_spec.encode(batch_nchw)
        y = self.run_raw(x)
        return self.output_spec.decode(np.asarray(y)).reshape(len(batch_nchw), -1)

    def fail(self, what: str, e: BaseException) -> BundleError:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        return BundleError(f"{self.name}: {what} ({msg})", self.model_path)


@dataclass
class Subject:
    """What is benchmarked: a verified bundle, or a host-only reference model."""

    name: str
    target: str
    backend: str
    precision: str
    preprocess: PreprocessConfig
    threshold: float | None
    model_bytes: int
    reference: dict[str, dict[str, Any]]
    open: Callable[[int | None, dict], Backend]
    meta: dict[str, Any]
    default_threads: int | None = None
    data_hint: dict[str, Any] | None = None
