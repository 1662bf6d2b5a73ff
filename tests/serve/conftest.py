"""Fixtures of the `edgecxr serve` tests (the helpers are in tests/serve/harness.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.hostile import write_dicom
from tests.serve.harness import study, xray


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    """Validation X-rays as DX files: 8 bit, 16 bit MONOCHROME1 with a VOI window, and refusals."""
    d = tmp_path_factory.mktemp("films")
    a, b = xray("PNEUMONIA"), xray("NORMAL")
    u16 = (65535 - a.astype(np.uint16) * 257)  # MONOCHROME1: bright is dark
    return {
        "chest8": write_dicom(d / "chest8.dcm", a, **study()),
        "chest16": write_dicom(d / "chest16.dcm", u16, photometric="MONOCHROME1", bits=16, WindowCenter=32768,
                               WindowWidth=65536, **study()),
        "chest_b": write_dicom(d / "chest_b.dcm", b, **study()),
        "skull": write_dicom(d / "skull.dcm", b, BodyPartExamined="SKULL", **study()),
        "lateral": write_dicom(d / "lateral.dcm", b, ViewPosition="LL", **study()),
        "ct": write_dicom(d / "ct.dcm", b, SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT", **study()),
        "after_crash": write_dicom(d / "after.dcm", a, **study()),
    }
