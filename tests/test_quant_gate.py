"""Int8 that holds on every CPU and on shifted images: saturation-safe recipes, the stress gate,
paired validation against the fp32 twin, and records that tell CPU kinds apart.

Everything runs the real runtimes on the real tiny model and real X-rays (tests/data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import CALIB, MINI, TINY, assert_clean_error, run_cli


# ------------------------------------------------------------------ recipes: no 16-bit saturation
def test_default_recipes_are_saturation_safe(bundles):
    """x86 without VNNI adds u8 x s8 pairs in 16 bits: 2 x 255 x 64 fits, 2 x 255 x 127 does not.
    The files themselves must carry 7-bit weights wherever such a kernel runs, whatever CPU made them."""
    import onnx
    import openvino as ov

    from edgecxr.host.export.recipes import DEFAULTS, get_recipe

    for backend, name in DEFAULTS.items():
        assert get_recipe(backend).saturation_safe, name
    from edgecxr.shared.targets import all_targets

    for t in all_targets().values():  # a profile's own recipe (the ONNX Runtime CPU boards) too
        assert get_recipe(t.backend, t.quant or None).saturation_safe, (t.name, t.quant)
    for key in ("rpi-int8", "nuc-int8", "jetson-int8"):
        m = json.loads((bundles[key] / "manifest.json").read_text())
        r = m["conversion"]["recipe"]
        assert r["name"] == DEFAULTS[m["backend"]] and r["saturation_safe"], r
    # ONNX (Jetson; ONNX Runtime's CPU provider on x86 elsewhere): every int8 weight within 7 bits
    g = onnx.load(str(bundles["jetson-int8"] / "model.onnx")).graph
    ws = [onnx.numpy_helper.to_array(i) for i in g.initializer
          if i.data_type == onnx.TensorProto.INT8 and not i.name.endswith("zero_point")]
    assert len(ws) > 40 and max(int(np.abs(w).max()) for w in ws) <= 64
    # OpenVINO: convolution and matmul weights within 7 bits (depthwise convolutions do not add pairs)
    model = ov.Core().read_model(str(bundles["nuc-int8"] / "model.xml"))
    seen = {"Convolution": 0, "GroupConvolution": 0, "MatMul": 0}
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.i8:
            continue
        n = op
        while n.get_type_name() not in seen:
            n = next(iter(n.outputs()[0].get_target_inputs())).get_node()
        seen[n.get_type_name()] += 1
        if n.get_type_name() != "GroupConvolution":
            assert int(np.abs(op.get_data()).max()) <= 64, n.get_friendly_name()
    assert seen["Convolution"] > 20 and seen["MatMul"] == 1


def test_unknown_recipe_is_a_clear_error(tmp_path):
    p = run_cli("export", TINY, "--target", "nuc", "--precision", "int8", "--quant", "magic", "--data", MINI,
                "--calibration", CALIB, "--out", tmp_path / "d")
    assert_clean_error(p, "unknown int8 recipe", "minmax-bc")
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_quant_help_lists_every_recipe_with_the_default_first():
    """``--quant``'s help comes from the recipe table, so a new recipe or default cannot go stale there."""
    from edgecxr.host.export.recipes import DEFAULTS, help_text, names

    text = help_text()
    for backend, default in DEFAULTS.items():
        part = next(p for p in text.split(", ") if p.startswith(backend + " "))
        assert part.split(" ", 1)[1].split("|") == [default] + [n for n in names(backend) if n != default], part


def test_saturating_recipe_is_recorded_as_such(tmp_path):
    """The old default stays available by name, and its manifest says it saturates without VNNI."""
    p = run_cli("export", TINY, "--target", "jetson", "--precision", "int8", "--quant", "minmax", "--data", MINI,
                "--calibration", CALIB, "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "jetson-orin-nano-int8" / "manifest.json").read_text())
    assert m["conversion"]["recipe"] == {**m["conversion"]["recipe"], "name": "minmax", "saturation_safe": False}
    assert "SATURATES" in m["conversion"]["quantization"]


def test_jetson_default_keeps_the_stem_float_in_tensorrt_form_and_corrects_biases(bundles):
    """The ONNX default: the first four convolutions stay float (no Q/DQ on their weights), every other
    convolution and the classifier read int8 weights through DequantizeLinear, every zero point is 0
    (TensorRT's explicit quantization), and the biases were corrected."""
    import onnx

    m = json.loads((bundles["jetson-int8"] / "manifest.json").read_text())
    conv = m["conversion"]
    from edgecxr.host.export.recipes import DEFAULTS

    assert conv["recipe"]["name"] == DEFAULTS["onnxruntime"]
    assert conv["recipe"]["params"]["float_stem"] == 4 and conv["recipe"]["params"]["bias_correction"] > 0
    assert len(conv["float_nodes"]) == 4 and conv["bias_correction"]["layers"] > 40
    g = onnx.load(str(bundles["jetson-int8"] / "model.onnx")).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}
    convs = [n for n in g.node if n.op_type in ("Conv", "Gemm")]
    float_w = [n.name for n in convs if n.input[1] in inits]
    int8_w = [n.name for n in convs if producer.get(n.input[1]) is not None
              and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert float_w == conv["float_nodes"] == [n.name for n in convs if n.op_type == "Conv"][:4]
    assert len(int8_w) == len(convs) - 4
    zps = [onnx.numpy_helper.to_array(i) for i in g.initializer if i.name.endswith("zero_point")]
    assert zps and all(int(np.abs(z).max()) == 0 for z in zps)


@pytest.mark.parametrize("target", ["x86-ort", "arm64-ort"])
def test_cpu_onnx_profiles_get_the_uint8_form_that_runs_on_integer_kernels(target, tmp_path):
    """ONNX Runtime on a CPU: uint8 activations x int8 weights within 7 bits (no 16-bit saturation on AVX2),
    the profile's recipe recorded, and at load ONNX Runtime fuses every int8 convolution into an integer
    kernel (QLinearConv), which the Jetson file's symmetric int8 activations do not get on a CPU."""
    import onnx
    import onnxruntime as ort

    from edgecxr.host.export.recipes import get_recipe
    from edgecxr.shared.targets import get_target

    p = run_cli("export", TINY, "--target", target, "--precision", "int8", "--data", MINI, "--calibration", CALIB,
                "--out", tmp_path)
    assert p.returncode == 0, p.stderr
    b = tmp_path / f"{target}-int8"
    m = json.loads((b / "manifest.json").read_text())
    r = get_recipe("onnxruntime", get_target(target).quant)
    assert m["conversion"]["recipe"] == r.to_dict() and r.saturation_safe and r.params["activations"] == "u8"
    assert m["export_check"]["label_agreement"] >= 0.9 and m["conversion"]["bias_correction"]["layers"] > 40
    g = onnx.load(str(b / "model.onnx")).graph
    inits = {i.name: i for i in g.initializer}
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert qs and all(inits[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in qs)
    ws = [onnx.numpy_helper.to_array(i) for i in g.initializer
          if i.data_type == onnx.TensorProto.INT8 and not i.name.endswith("zero_point")]
    assert len(ws) > 40 and max(int(np.abs(w).max()) for w in ws) <= 64
    convs = [n for n in g.node if n.op_type == "Conv"]
    stem = r.params["float_stem"]
    assert [n.name for n in convs if n.input[1] in inits] == m["conversion"]["float_nodes"] == [n.name for n in convs[:stem]]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(b / "model.onnx"), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node]
    assert fused.count("QLinearConv") == len(convs) - stem  # every int8 convolution on an integer kernel


@pytest.mark.parametrize("recipe", ["percentile-rr-fs4-bc", "u8-percentile-rr-fs2-bc"])
def test_streamed_percentile_calibration_gives_onnx_runtimes_own_file(recipe, tmp_path):
    """The batched two-pass calibration (ort_calib.py) writes the very file ONNX Runtime's own percentile
    calibrator does, byte for byte, for the Jetson's symmetric form and the CPU profiles' uint8 form; the
    second export of the same graph and images reuses the histograms (no third calibration)."""
    import dataclasses
    import hashlib

    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.export import onnx as onnx_conv
    from edgecxr.host.export import ort_calib
    from edgecxr.host.export.recipes import get_recipe
    from edgecxr.host.model import load_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

    model, meta = load_checkpoint(TINY)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    calib = [preprocess_grey(g, pp) for g in load_calibration_set(CALIB).greys]
    r = get_recipe("onnxruntime", recipe)
    assert r.params["calibrate_method"] == "percentile"
    ort_calib._MEMO.clear()
    digests = {}
    for streamed in (False, True, True):
        rr = dataclasses.replace(r, params={**r.params, "streamed_calibration": streamed})
        out = tmp_path / f"{streamed}-{len(digests)}"
        out.mkdir()
        onnx_conv.convert(model, pp.size, pp.channels, calib, "int8", out, rr)
        digests[out.name] = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
        assert sorted(f.name for f in out.iterdir()) == ["model.onnx"]
        assert len(ort_calib._MEMO) == (1 if streamed else 0)
    assert len(set(digests.values())) == 1, digests


def test_streamed_asymmetric_percentile_ranges_match_onnx_runtime():
    """The asymmetric histogram (x over [-t, t], ONNX Runtime's collect_value) gives ONNX Runtime's ranges too."""
    import onnxruntime as ort  # noqa: F401
    import torch
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.export import ort_calib
    from edgecxr.host.model import load_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

    model, meta = load_checkpoint(TINY)
    pp = PreprocessConfig.from_dict(meta["preprocess"])
    calib = [preprocess_grey(g, pp) for g in load_calibration_set(CALIB).greys][:20]
    import tempfile

    with tempfile.TemporaryDirectory() as td:
        fp, pre = Path(td) / "fp.onnx", Path(td) / "pre.onnx"
        torch.onnx.export(model.eval(), (torch.zeros(1, pp.channels, pp.size, pp.size),), str(fp),
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "b"}},
                          opset_version=17, dynamo=False)
        quant_pre_process(str(fp), str(pre), skip_symbolic_shape=True)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter([{"input": x[None]} for x in calib])

            def get_next(self):
                return next(self._it, None)

        ops = list(set(list(QLinearOpsRegistry.keys()) + list(QDQRegistry.keys())))
        c = create_calibrator(pre, ops, augmented_model_path=str(Path(td) / "aug.onnx"),
                              calibrate_method=CalibrationMethod.Percentile,
                              extra_options={"symmetric": False, "percentile": 99.99})
        c.collect_data(Reader())
        theirs = c.compute_data()
        ours = ort_calib.percentile_ranges(pre, calib, 99.99, symmetric=False, batch=7)
    assert set(theirs.keys()) == set(ours.keys()) and len(ours.keys()) > 40
    for k in theirs.keys():
        assert theirs[k].range_value == ours[k].range_value, k
    assert any(ours[k].range_value[0] != -ours[k].range_value[1] for k in ours.keys())  # not the |x| form


@pytest.mark.parametrize("target,raw_recipe,bc_recipe,layers", [
    ("jetson", "minmax-rr", "minmax-rr-bc", None),
    ("rpi", "pt2e-histogram", "pt2e-histogram-bc", 53),  # LiteRT: 52 convolutions and the classifier
])
def test_bias_correction_removes_the_mean_shift_of_the_logits(target, raw_recipe, bc_recipe, layers, tmp_path):
    """On the images it was fitted on, the corrected int8 file (run by its own runtime) has (almost) the
    fp32 model's mean logits; the same recipe without the correction does not."""
    from edgecxr.device.backends import infer_all, open_backend
    from edgecxr.device.bundle import verify
    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey

    for q in (raw_recipe, bc_recipe):
        p = run_cli("export", TINY, "--target", target, "--precision", "int8", "--quant", q, "--data", MINI,
                    "--calibration", CALIB, "--out", tmp_path / q)
        assert p.returncode == 0, p.stderr
    p = run_cli("export", TINY, "--target", target, "--precision", "fp32", "--data", MINI,
                "--calibration", CALIB, "--out", tmp_path / "fp32")
    assert p.returncode == 0, p.stderr
    pp = PreprocessConfig.from_dict(read_checkpoint(TINY)["preprocess"])
    x = np.stack([preprocess_grey(g, pp) for g in load_calibration_set(CALIB).greys])

    def mean_logits(folder: Path) -> np.ndarray:
        b = verify(next(folder.glob("*/manifest.json")).parent)
        return infer_all(open_backend(b, threads=2), x).mean(axis=0)

    ref = mean_logits(tmp_path / "fp32")
    raw = np.abs(mean_logits(tmp_path / raw_recipe) - ref).max()
    fixed = np.abs(mean_logits(tmp_path / bc_recipe) - ref).max()
    bc = json.loads(next((tmp_path / bc_recipe).glob("*/manifest.json")).read_text())["conversion"]["bias_correction"]
    assert bc["images"] == 32
    if layers is not None:
        assert bc["layers"] == layers, bc
    assert fixed < 0.5 * raw, (fixed, raw)


# ------------------------------------------------------------------ the stress gate
def _floor_calibration(dst: Path, floor: int) -> Path:
    """A deliberately poor calibration set: the calibration images with no pixel darker than ``floor``
    (as if every calibration film had been taken without black borders)."""
    from PIL import Image

    from edgecxr.host.calibrate import set_hash
    from edgecxr.shared.fsutil import sha256_file

    shutil.copytree(CALIB, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for it in m["items"]:
        f = dst / it["path"]
        with Image.open(f) as im:
            a = np.asarray(im.convert("L"))
        Image.fromarray(np.maximum(a, floor).astype(np.uint8)).save(f)
        it["sha256"] = sha256_file(f)
    m["sha256"] = set_hash([i["sha256"] for i in m["items"]])
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def crop_stress(tmp_path_factory):
    out = tmp_path_factory.mktemp("stress") / "crop"
    p = run_cli("data", "stress", MINI, "--out", out, "--corruptions", "crop_pad", "--severity", "2,3")
    assert p.returncode == 0, p.stderr
    return out


def test_gate_fails_on_a_corruption_a_poor_calibration_cannot_cover(bundles, crop_stress, tmp_path):
    """LiteRT int8 (bit-identical on x86 and arm64, so this holds on every CPU kind).

    Calibrated on films without black regions, the int8 model clips the activations that black
    padding drives: it still agrees with fp32 on the reference images but not once the films are
    shifted with black borders (crop_pad). The default calibration covers both."""
    poor = _floor_calibration(tmp_path / "poor", 60)
    dist = tmp_path / "dist"
    p = run_cli("export", TINY, "--target", "rpi", "--precision", "int8", "--data", MINI, "--calibration", poor,
                "--out", dist)
    assert p.returncode == 0, p.stderr
    shutil.copytree(bundles["rpi-fp32"], dist / "rpi4-fp32")  # its fp32 twin, found beside it
    limits = ("--max-auc-drop", "0.03", "--min-agreement", "0.93")
    details = tmp_path / "poor.json"
    p = run_cli("gate", dist / "rpi4-int8", "--stress", crop_stress, *limits, "--details", details)
    assert_clean_error(p, "gate failed", "stress:crop_pad")
    rows = {r["images"]: r for r in json.loads(details.read_text())["rows"]}
    assert rows["reference"]["verdict"] == "PASS", rows["reference"]
    assert rows["stress:crop_pad"]["verdict"] == "FAIL" and rows["stress:crop_pad"]["n"] == 128
    assert rows["stress:crop_pad"]["against"] == "twin rpi4-fp32"
    assert rows["stress:crop_pad"]["mean_abs_diff"] > 2 * rows["reference"]["mean_abs_diff"]
    # the calls near the threshold: counted from the same probability pairs, flips split by direction
    d = json.loads(details.read_text())
    pair = next(x for x in d["pairs"] if x["images"] == "stress:crop_pad")
    pr, pq, thr = np.array(pair["p_fp32"]), np.array(pair["p"]), pair["threshold"]
    nt = d["near_threshold"][0]
    assert nt["n"] == int(np.sum(np.abs(pr - thr) <= 0.05)) and nt["of"] == 128
    flips = (pr >= thr) != (pq >= thr)
    assert nt["flips"] + nt["flips_outside"] == int(flips.sum()) == 128 - round(rows["stress:crop_pad"]["agreement"] * 128)
    assert nt["up"] + nt["down"] == nt["flips"] == nt["normal_flips"] + nt["pneumonia_flips"]
    # with a margin that takes in every flip, the poor calibration fails this criterion on its own
    wide = tmp_path / "wide.json"
    p = run_cli("gate", dist / "rpi4-int8", "--stress", crop_stress, "--max-auc-drop", "1", "--min-agreement", "0",
                "--near-margin", "1", "--max-near-flip-rate", "0", "--details", wide)
    assert_clean_error(p, "gate failed", "near-threshold")
    near = [r for r in json.loads(wide.read_text())["rows"] if r["images"].startswith("near-threshold")]
    assert len(near) == 1 and near[0]["verdict"] == "FAIL" and near[0]["n"] == 128, near
    # the default calibration passes the same gate, the twin given explicitly this time
    details = tmp_path / "default.json"
    summary = tmp_path / "gate.md"
    # (the tiny model's LiteRT int8 reads higher than fp32 near its threshold, as the shipped ones do: issue 26)
    p = run_cli("gate", bundles["rpi-int8"], "--stress", crop_stress, "--reference", bundles["rpi-fp32"], *limits,
                "--expect-fail", "litert:near-threshold", "--details", details, "--summary", summary)
    assert p.returncode == 0, p.stdout + p.stderr
    d = json.loads(details.read_text())
    assert [r["images"] for r in d["rows"]] == ["reference", "stress:crop_pad", "near-threshold ±0.05 (stress)"]
    assert d["rows"][2]["verdict"] in ("PASS", "KNOWN") and d["max_near_flip_rate"] == 0.1
    assert list(d["stress"]["corruptions"]) == ["crop_pad"] and d["stress"]["severities"] == [2, 3]
    assert "stress:crop_pad" in summary.read_text() and "seed 0" in summary.read_text()
    pair = next(x for x in d["pairs"] if x["images"] == "stress:crop_pad")
    assert len(pair["p"]) == len(pair["p_fp32"]) == len(pair["severity"]) == 128


def test_stress_gate_needs_a_twin(bundles, crop_stress, tmp_path):
    alone = tmp_path / "alone"
    shutil.copytree(bundles["nuc-int8"], alone / "nuc-int8")
    p = run_cli("gate", alone / "nuc-int8", "--stress", crop_stress, "--max-auc-drop", "1", "--min-agreement", "0")
    assert_clean_error(p, "gate failed", "no fp32 twin")


# ------------------------------------------------------------------ paired validation on a site's images
def test_paired_validation_on_a_sites_own_images(bundles, crop_stress, tmp_path):
    """A site's labelled folder that the bundle has no float reference for: the int8 bundle is
    paired with its fp32 twin on the board, by sha256, with DeLong's test and the flipped files."""
    site = crop_stress / "crop_pad-s3"  # any labelled folder will do: these images are in no manifest
    results = tmp_path / "results"
    p = run_cli("bench", bundles["jetson-int8"], "--data", site, "--reference", bundles["jetson-fp32"],
                "--iterations", "3", "--warmup", "1", "--results", results, "--device", "site")
    assert p.returncode == 0, p.stderr
    assert "vs fp32 twin" in p.stdout
    rec = json.loads((results / "site.jsonl").read_text().splitlines()[0])
    v = rec["vs_float"]
    assert v["against"] == "fp32 twin bundle" and v["matched"] == v["n"] == 64
    assert {"auc_drop", "delong_p", "label_agreement", "flipped", "reference_manifest_sha256"} <= set(v)
    assert all(f["path"].endswith(".png") for f in v["flipped"])
    p = run_cli("gate", bundles["jetson-int8"], "--data", site, "--reference", bundles["jetson-fp32"],
                "--max-auc-drop", "0.05", "--min-agreement", "0.9")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "twin jetson-orin-nano-fp32" not in p.stdout or "| data |" in p.stdout
    # without a twin, images the manifest does not cover cannot be judged
    alone = tmp_path / "alone"
    shutil.copytree(bundles["jetson-int8"], alone / "jetson-orin-nano-int8")
    assert_clean_error(run_cli("gate", alone / "jetson-orin-nano-int8", "--data", site), "no fp32 twin")


def test_twin_from_another_checkpoint_is_refused(bundles, tmp_path):
    other = tmp_path / "other-fp32"
    shutil.copytree(bundles["jetson-fp32"], other)
    m = json.loads((other / "manifest.json").read_text())
    m["source"]["checkpoint_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    p = run_cli("bench", bundles["jetson-int8"], "--data", MINI, "--reference", other, "--no-store",
                "--iterations", "2", "--warmup", "0")
    assert_clean_error(p, "not the fp32 twin", "another checkpoint")
    p = run_cli("bench", bundles["jetson-int8"], "--data", MINI, "--reference", bundles["nuc-int8"], "--no-store")
    assert_clean_error(p, "must be an fp32 bundle")


# ------------------------------------------------------------------ records that tell CPU kinds apart
@pytest.mark.parametrize("machine,flags,isa", [
    ("x86_64", {"avx2"}, "avx2"),
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "avx512vnni"),
    ("x86_64", {"avx2", "avx512_vnni", "amx_tile", "amx_int8"}, "amx"),
    ("x86_64", {"avx2", "avx_vnni"}, "avxvnni"),
    ("aarch64", {"asimd"}, "neon"),
    ("aarch64", {"asimd", "asimddp"}, "neon-dotprod"),
    ("aarch64", {"asimd", "asimddp", "i8mm"}, "neon-i8mm"),
])
def test_int8_isa_classes(machine, flags, isa):
    from edgecxr.shared.sysinfo import INT8_ISA_NOTES, int8_isa

    assert int8_isa(flags, machine) == isa and INT8_ISA_NOTES[isa]


def test_records_carry_the_isa_and_report_keeps_cpu_kinds_apart(bundles, tmp_path):
    from edgecxr.device.bench import BenchConfig, run, store, subject_from_bundle
    from edgecxr.device.report import latest_per_subject
    from edgecxr.shared.sysinfo import default_device_name, int8_isa

    rec = run(subject_from_bundle(bundles["nuc-int8"]), MINI, BenchConfig(iterations=2, warmup=0))
    here = int8_isa()
    assert rec["device"] == default_device_name() and rec["device"].endswith(f"-{here}")
    assert rec["device_facts"]["int8_isa"] == here and rec["device_facts"]["int8_isa_note"]
    # two machines that an older default name called the same: one AVX2-only, one with VNNI
    a = json.loads(json.dumps(rec))
    b = json.loads(json.dumps(rec))
    for r, flags in ((a, ["avx2"]), (b, ["avx2", "avx512_vnni", "avx512f"])):
        r["device"] = "x86_64-amd-epyc-2c"
        r["device_facts"] = {k: v for k, v in r["device_facts"].items() if not k.startswith("int8_isa")}
        r["device_facts"].update(machine="x86_64", cpu_flags=flags)
    b["time"] = "2099-01-01T00:00:00+00:00"
    results = tmp_path / "results"
    store(a, results)
    store(b, results)
    assert sorted(latest_per_subject([a, b])) == ["x86_64-amd-epyc-2c-avx2", "x86_64-amd-epyc-2c-avx512vnni"]
    assert list(latest_per_subject([a])) == ["x86_64-amd-epyc-2c"]  # one kind: the name is kept
    out = tmp_path / "RESULTS.md"
    p = run_cli("report", "--results", results, "--out", out)
    assert p.returncode == 0, p.stderr
    text = out.read_text()
    assert "## x86_64-amd-epyc-2c-avx2" in text and "## x86_64-amd-epyc-2c-avx512vnni" in text
    assert "saturate" in text and "32-bit int8 accumulation" in text


_LOGITS = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
x = np.load(sys.argv[2])
np.save(sys.argv[3], ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0])
"""


def test_cpu_onnx_file_computes_the_same_on_avx2_without_vnni(tmp_path):
    """The x86-ort int8 file on an AVX2 CPU without VNNI (QEMU user mode emulating a Haswell, whose u8 x s8
    kernels add pairs in 16 bits) gives the logits this machine gives: its 7-bit weights cannot saturate.
    On a VNNI host the same form with 8-bit weights is run as a control: it must differ there, or the
    emulated CPU did not take the AVX2 kernels and the test proves nothing."""
    import platform
    import subprocess
    import sys

    from edgecxr.host.calibrate import load_calibration_set
    from edgecxr.host.model import read_checkpoint
    from edgecxr.shared.preprocess import PreprocessConfig, preprocess_grey
    from edgecxr.shared.sysinfo import int8_isa

    qemu = shutil.which("qemu-x86_64-static")
    if platform.machine() != "x86_64" or not qemu:
        pytest.skip("needs an x86-64 host with qemu-user-static (installed with the emulated arm64 board)")
    files = {}
    for name, extra in (("x86-ort", ()), ("rr0", ("--quant", "u8-minmax"))):
        if extra and int8_isa() == "avx2":
            continue  # the host itself is AVX2-only: nothing to contrast with
        out = tmp_path / name
        p = run_cli("export", TINY, "--target", "x86-ort", "--precision", "int8", "--data", MINI, "--calibration",
                    CALIB, "--out", out, *extra)
        assert p.returncode == 0, p.stderr
        files[name] = out / "x86-ort-int8" / "model.onnx"
    pp = PreprocessConfig.from_dict(read_checkpoint(TINY)["preprocess"])
    np.save(tmp_path / "x.npy", np.stack([preprocess_grey(g, pp) for g in load_calibration_set(CALIB).greys]))
    (tmp_path / "logits.py").write_text(_LOGITS)
    diff = {}
    for name, f in files.items():
        for how, pre in (("here", []), ("haswell", [qemu, "-cpu", "Haswell"])):
            subprocess.run([*pre, sys.executable, tmp_path / "logits.py", f, tmp_path / "x.npy",
                            tmp_path / f"{name}-{how}.npy"], check=True, capture_output=True, timeout=600)
        diff[name] = float(np.abs(np.load(tmp_path / f"{name}-here.npy") - np.load(tmp_path / f"{name}-haswell.npy")).max())
    assert diff["x86-ort"] < 1e-4, diff
    if "rr0" in diff:
        assert diff["rr0"] > 0.05, diff
