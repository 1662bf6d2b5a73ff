"""The embedding API (edgecxr.device.api): the same readings as `edgecxr predict`, one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgecxr.device.api import Reading, open_bundle
from edgecxr.shared.errors import BundleError, EdgeCXRError, ImageReadError
from edgecxr.shared.imageio import load_grey

from .conftest import FULLRES, run_cli

IMAGES = sorted(p for p in FULLRES.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:3]


@pytest.mark.parametrize("key", ["rpi-int8", "nuc-fp32", "jetson-int8"])
def test_api_gives_the_cli_readings_on_files_and_arrays(bundles, key):
    model = open_bundle(bundles[key], threads=1)
    # each board's target names its runtime (targets/rpi4.toml, nuc.toml, jetson-orin-nano.toml)
    assert model.info()["backend"] == {"rpi": "litert", "nuc": "openvino", "jetson": "onnxruntime"}[key.split("-")[0]]
    p = run_cli("predict", bundles[key], *IMAGES, "--json", "--threads", "1")
    assert p.returncode == 0, p.stderr
    cli = [json.loads(x) for x in p.stdout.splitlines()]
    got = model.predict_files(IMAGES)
    for r, c, f in zip(got, cli, IMAGES, strict=True):
        assert isinstance(r, Reading)
        assert r.label == c["label"] and r.prob == pytest.approx(c["prob"], abs=1e-6) and r.file == str(f)
        arr = model.predict_array(load_grey(f))  # the decoded pixels give the same reading
        assert arr.prob == pytest.approx(r.prob, abs=1e-6) and arr.label == r.label
    # a batch through the runtime agrees with one-by-one (within int8 rounding of a batch)
    probs = model.probabilities([load_grey(f) for f in IMAGES])
    assert np.allclose(probs, [r.prob for r in got], atol=1e-4)


def test_api_errors_are_one_line_exceptions(bundles, tmp_path):
    model = open_bundle(bundles["rpi-fp32"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        model.predict_file(bad)
    assert isinstance(model.predict_files([bad])[0], ImageReadError)
    with pytest.raises(ImageReadError, match="2-D grey image"):
        model.predict_array(np.zeros((3, 64, 64), np.uint8))
    broken = tmp_path / "b"
    shutil.copytree(bundles["rpi-fp32"], broken)
    f = broken / "model.tflite"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(BundleError) as e:
        open_bundle(broken)
    assert "\n" not in str(e.value) and isinstance(e.value, EdgeCXRError)
