import numpy as np
import pytest

from edgecxr.shared.imageio import load_grey
from edgecxr.shared.preprocess import PreprocessConfig, normalize, preprocess_file, preprocess_grey, resize_grey

from .conftest import FULLRES, MINI


def test_shapes_and_values():
    cfg = PreprocessConfig(size=96)
    x = preprocess_file(FULLRES / "IM-0206-0001.jpeg", cfg)
    assert x.shape == (3, 96, 96) and x.dtype == np.float32
    g = resize_grey(load_grey(FULLRES / "IM-0206-0001.jpeg"), 96)
    for c in range(3):
        assert np.allclose(x[c], (g - cfg.mean[c]) / cfg.std[c], atol=1e-6)


def test_single_channel_and_roundtrip():
    cfg = PreprocessConfig(size=64, channels=1, mean=(0.5,), std=(0.25,))
    x = preprocess_grey(np.full((10, 20), 0.75, np.float32), cfg)
    assert x.shape == (1, 64, 64) and np.allclose(x, 1.0)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg


def test_identity_resize_is_exact():
    f = next((MINI / "PNEUMONIA").iterdir())
    g = load_grey(f)
    assert np.array_equal(resize_grey(g, g.shape[0]), g)


def test_torch_normalisation_matches_numpy():
    torch = pytest.importorskip("torch")
    from edgecxr.host.train import normalize_torch

    cfg = PreprocessConfig(size=64)
    g = resize_grey(load_grey(FULLRES / "IM-0206-0001.jpeg"), 64)
    a = normalize(g, cfg)
    b = normalize_torch(torch.from_numpy(g[None]), cfg)[0].numpy()
    assert np.allclose(a, b, atol=1e-6)


def test_bad_config():
    with pytest.raises(ValueError):
        PreprocessConfig(size=2)
