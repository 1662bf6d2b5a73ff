"""User-facing errors: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path


class EdgeCXRError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``str(err)`` as one line and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = str(path) if path is not None else None
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class ImageReadError(EdgeCXRError):
    """An image file could not be read as an X-ray."""


class NotApplicable(ImageReadError):
    """A readable image the model is not for (not CR/DX, not the chest, a lateral view): not a failure."""


class DataError(EdgeCXRError):
    """A dataset is unusable (empty, single-class, missing folder...)."""


class BundleError(EdgeCXRError):
    """A deployment bundle failed verification or could not be loaded."""


class GateFailure(EdgeCXRError):
    """The quantization gate found an unacceptable accuracy loss (``rows``: every bundle's verdict)."""

    exit_code = 1

    def __init__(self, message: str, path=None, rows: list | None = None):
        super().__init__(message, path)
        self.rows = list(rows or [])
