"""`remote predict --explain`: the board makes occlusion heatmaps with its own runtime, the PNGs come back
over a real pty link."""

from __future__ import annotations

import json

from PIL import Image

from edgecxr.cli.link import predict_remote
from edgecxr.device.explain import n_forwards, output_names
from tests.conftest import ROOT
from tests.link.test_cli_link import BUNDLE, board  # noqa: F401  (the board fixture)

IMAGES = [ROOT / "tests/data/fullres/IM-0206-0001.jpeg", ROOT / "tests/data/fullres/person1320_virus_2277.jpeg"]


def test_remote_predict_explain_brings_the_pngs_back(bundles, board, tmp_path):  # noqa: F811
    rig = board(data=None)
    out = tmp_path / "heat"
    rows = predict_remote(rig.client, IMAGES, str(bundles[BUNDLE]), echo=lambda _: None, explain=out,
                          explain_options={"grid": 5})
    assert [r["file"] for r in rows] == [str(p) for p in IMAGES]
    names = [f"{n}.png" for n in output_names(IMAGES)]
    assert [r["png"] for r in rows] == names
    assert all(r["grid"] == 5 and r["forwards"] == n_forwards(64, 5, 2) == 17 for r in rows)
    for r in rows:
        local = (out / r["png"]).read_bytes()
        assert local == (rig.store / r["board_png"]).read_bytes()  # the board's file, byte for byte
        with Image.open(out / r["png"]) as im:
            assert im.size[0] == 640
    page = (out / "index.html").read_text()
    assert all(n in page for n in names)
    assert json.loads((out / "explain.json").read_text())["rows"][0]["label"] == rows[0]["label"]
