"""The runtime registry and the board profiles that use it: every key is used or refused."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.runtimes import RUNTIMES
from edgecxr.shared.targets import Target, all_targets, load_target_file

from .conftest import MINI, ROOT, assert_clean_error, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PROFILES = sorted((ROOT / "targets").glob("*.toml"))


def test_registry_entries_point_at_real_code_and_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for rt in RUNTIMES.values():
        mod, cls = rt.backend_ref()
        assert importlib.util.find_spec(mod) is not None, rt.backend
        assert cls in Path(importlib.util.find_spec(mod).origin).read_text(), rt.backend
        if rt.converter:
            assert importlib.util.find_spec(rt.converter) is not None, rt.converter
        assert rt.extra in extras, f"{rt.name}: extra {rt.extra!r} is not in pyproject.toml"
        assert rt.suffix.startswith(".")
        # a device-side backend lives in the device package, the float reference on the host
        assert mod.startswith("edgecxr.device." if rt.device_side else "edgecxr.host."), mod


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_key_of_every_shipped_profile_is_known(path):
    raw = tomllib.loads(path.read_text())
    t = load_target_file(path)
    assert set(raw) <= set(Target.__dataclass_fields__) - {"path"}
    assert set(raw.get("options", {})) <= set(RUNTIMES[t.backend].options)
    assert RUNTIMES[t.backend].converter, f"{t.name}: its runtime has no converter"


BASE = 'name = "x"\nbackend = "{b}"\nprecision = "int8"\nthreads = 4\ninput_size = 224\narch = "aarch64"\n'


@pytest.mark.parametrize("extra,needle", [
    ('tread = 4\n', "unknown key(s) tread"),
    ('[options]\nuse_xnnpak = true\n', "use_xnnpak are not read by the litert backend"),
    ('[options]\nperformance_hint = "LATENCY"\n', "performance_hint are not read by the litert backend"),
    ('precisions = ["int4"]\n', "precision"),
])
def test_a_profile_with_an_unused_key_is_refused_with_one_line(tmp_path, extra, needle):
    (tmp_path / "x.toml").write_text(BASE.format(b="litert") + extra)
    with pytest.raises(EdgeCXRError, match="x.toml"):
        all_targets(tmp_path)
    p = run_cli("targets", env={"EDGECXR_TARGETS": str(tmp_path)})
    assert_clean_error(p, "x.toml", needle)


def test_unknown_backend_in_a_profile_names_the_registry(tmp_path):
    (tmp_path / "x.toml").write_text(BASE.format(b="tensorflow"))
    p = run_cli("targets", env={"EDGECXR_TARGETS": str(tmp_path)})
    assert_clean_error(p, "x.toml", "unknown backend 'tensorflow'", "litert")


def test_bundles_use_their_runtimes_suffix(bundles):
    from edgecxr.device.bundle import verify

    for b in bundles.values():
        m = verify(b).manifest
        assert m["model_file"].endswith(RUNTIMES[m["backend"]].suffix)


def test_use_xnnpack_false_really_runs_litert_without_xnnpack(bundles):
    """The Pi profiles' option is read: false selects LiteRT's builtin kernels, same int8 answers."""
    from edgecxr.device.backends import open_backend
    from edgecxr.device.bundle import verify
    from edgecxr.shared.data import load_item, scan
    from edgecxr.shared.preprocess import preprocess_grey

    b = verify(bundles["rpi-int8"])
    items = scan(MINI).items[:8]
    from edgecxr.shared.preprocess import PreprocessConfig

    pp = PreprocessConfig.from_dict(b.manifest["preprocess"])
    x = np.stack([preprocess_grey(load_item(MINI, it), pp) for it in items])
    on, off = open_backend(b, threads=1), open_backend(b, threads=1, options={"use_xnnpack": False})
    assert "XNNPACK" in on.info().device and "builtin" in off.info().device
    y_on, y_off = on.infer(x), off.infer(x)
    step = float(b.manifest["output"].get("scale") or 0.1)
    assert np.abs(y_on - y_off).max() <= 2 * step + 1e-6
    with pytest.raises(EdgeCXRError, match="use_xnnpack must be true or false"):
        open_backend(b, options={"use_xnnpack": "no"})
