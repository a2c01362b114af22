"""Acceptance (deployment): int8 TFLite/ONNX artifacts of freshly QAT-trained tiny models."""

import json

import numpy as np
import pytest
import torch

from quantir.cli import main
from quantir.data.resize import downscale
from quantir.export import tflite_graph as tg
from quantir.export.api import export_artifacts
from quantir.export.config import ExportConfig
from quantir.export.runtime import load_runtime
from quantir.models import create_model, reparameterize_model
from quantir.models.mobileone_sr import compose_stem
from quantir.quant.api import convert, prepare_qat, refresh_weight_qparams, set_phase
from quantir.quant.config import QuantConfig
from tests.conftest import natural_image

MODELS = {"mobileone_sr": {"channels": 8, "blocks": 2, "branches": 2}, "abpn": {},
          "qatie_unet_int8": {"channels": 8}, "edsr_baseline": {"channels": 8, "res_blocks": 2},  # x4: two d2s
          "qatie_unet": {"channels": 8},  # the paper net: InstanceNorm statistics as float islands
          # QAT on the stem-composed form (qat.compose_stem): mirror pad as slices + concats, two
          # 5x5 convs on the input, out + direct as one residual on the output grid
          "mobileone_sr_composed": {"channels": 8, "blocks": 2, "branches": 2},
          # ... with the direct conv split (qat.direct_split): its clamp as its int8 range, two
          # edge branches added to the anchor on the input grid
          "mobileone_sr_split": {"channels": 8, "blocks": 2, "branches": 2}}
# The float ops each model's TFLite may keep (its InstanceNorms' statistics); every other op is int8.
# InstanceNorm statistics as exact sums of integer codes (quant/instance_norm.py)
FLOAT_ISLANDS = {"qatie_unet": {"ADD", "DEQUANTIZE", "DIV", "FLOOR", "MUL", "QUANTIZE", "RESHAPE", "ROUND", "RSQRT",
                                "STRIDED_SLICE", "SUB", "SUM"}}


def _inputs(info, n=3, seed=50):
    imgs = [natural_image(60, 72, seed=seed + k) for k in range(n)]
    return [downscale(i, info.scale) for i in imgs] if info.is_sr else [i[:56, :64] for i in imgs]


def _batch(info, rng, n=8, p=16):
    from quantir.data.degrade import degrade

    s = info.scale
    xs, ys = [], []
    for _ in range(n):
        img = natural_image(80, 80, seed=int(rng.integers(1000)))
        y0, x0 = rng.integers(0, 80 - p * s + 1, 2)
        tgt = img[y0:y0 + p * s, x0:x0 + p * s]
        xs.append(downscale(tgt, s) if s > 1 else degrade(tgt, rng))
        ys.append(tgt)
    to = lambda a: torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() * info.pixel_max / 255
    return to(xs), to(ys)


def _qat_model(name):
    """A tiny model trained briefly in FP32, then a few QAT steps with learned ranges."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model(name.removesuffix("_composed").removesuffix("_split"), **MODELS[name])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(60):
        x, y = _batch(model.info, rng)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    deploy = reparameterize_model(model)
    qdeploy = deploy
    if name.endswith(("_composed", "_split")):
        qdeploy = compose_stem(deploy, direct_split=8.0 if name.endswith("_split") else 0.0)
    qmodel = prepare_qat(qdeploy, x[:2], QuantConfig())
    with torch.no_grad():
        qmodel(x)
    set_phase(qmodel, "learn")
    opt = torch.optim.Adam(qmodel.parameters(), lr=1e-4)
    for _ in range(4):  # a few QAT steps
        x, y = _batch(model.info, rng)
        loss = (qmodel(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    set_phase(qmodel, "freeze")
    refresh_weight_qparams(qmodel, x[:1])
    return qmodel, deploy


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    qmodel, deploy = _qat_model(name)
    out = tmp_path_factory.mktemp(name)
    fixed = (24, 32) if qmodel.info.is_sr else (40, 48)
    res = export_artifacts(convert(qmodel), deploy, out, ExportConfig(shape=fixed), parity_images=_inputs(qmodel.info),
                           reference=qmodel)
    return name, qmodel, out, res, fixed


def test_artifacts_exist_all_int8_and_bit_exact(exported):
    name, qmodel, out, res, fixed = exported
    for f in ("model_int8.tflite", "model_int8.onnx", "model_float.tflite", f"model_int8_{fixed[0]}x{fixed[1]}.tflite",
              "parity.json", "model_card.md"):
        assert (out / f).is_file(), f
    parity = json.loads((out / "parity.json").read_text())
    for backend in ("tflite", "onnx"):
        r = parity[backend]
        assert r["io_dtype"] == "int8 -> int8"
        assert r["max_lsb"] == 0, (backend, r)
    islands = FLOAT_ISLANDS.get(name, set())
    assert set(parity["tflite"]["non_int8_ops"]) == islands and parity["tflite"]["all_int8"] == (not islands)
    assert parity["onnx"]["all_int8"] == (not islands)
    io = tg.io_details(tg.read((out / "model_int8.tflite").read_bytes()))
    assert io["inputs"][0]["dtype"] == "int8" and io["inputs"][0]["shape"] == [1, -1, -1, 3]
    assert io["inputs"][0]["zero_point"] == -128


def test_sr_upsampler_is_one_depth_to_space(exported):
    name, qmodel, out, *_ = exported
    ops = [r["op"] for r in tg.op_table(tg.read((out / "model_int8.tflite").read_bytes()))]
    assert "RESHAPE" not in ops or "RESHAPE" in FLOAT_ISLANDS.get(name, ())  # a norm's [1,C,1,1] <-> [1,1,1,C]
    assert "RESIZE_NEAREST_NEIGHBOR" not in ops  # nearest x2 is depth-to-space (dynamic H and W)
    if qmodel.info.is_sr:  # EDSR's x4 upsampler is two x2 steps, as in the reference
        assert ops.count("DEPTH_TO_SPACE") == (2 if name == "edsr_baseline" else 1) and "TRANSPOSE" not in ops


def test_fixed_shape_equals_dynamic_at_that_size(exported):
    name, qmodel, out, res, (h, w) = exported
    img = natural_image(h, w, seed=9)
    dyn = load_runtime(out / "model_int8.tflite").run(img)
    fix = load_runtime(out / f"model_int8_{h}x{w}.tflite").run(img)
    assert np.array_equal(dyn, fix)
    big = natural_image(h + 13, 2 * w + 5, seed=10)  # larger than the fixed shape: tiled
    assert load_runtime(out / f"model_int8_{h}x{w}.tflite").run(big).shape[:2] == (
        big.shape[0] * qmodel.info.scale, big.shape[1] * qmodel.info.scale)


def test_eval_cli_on_artifacts_matches_fake_quant(exported, tmp_path):
    from PIL import Image

    from functools import partial

    from quantir.evaluate.evaluate import evaluate
    from quantir.models.apply import run_uint8

    name, qmodel, out, *_ = exported
    info = qmodel.info
    data = tmp_path / "photos"
    data.mkdir()
    for k in range(3):
        Image.fromarray(natural_image(48, 60, seed=70 + k)).save(data / f"p{k}.png")
    fq = evaluate(partial(run_uint8, qmodel), info.eval_pairs(data), border=info.border)
    for art in ("model_int8.tflite", "model_int8.onnx"):
        js = tmp_path / f"{art}.json"
        scale = ["--scale", str(info.scale)] if info.is_sr else []
        assert main(["eval", str(out / art), "--data", str(data), "--task", info.task.value, *scale,
                     "--json", str(js)]) == 0
        assert abs(json.loads(js.read_text())["psnr_rgb"] - fq["psnr_rgb"]) < 0.02


def test_corrupt_and_mismatched_model_files(exported, tmp_path, capsys):
    name, qmodel, out, *_ = exported
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    half = tmp_path / "half.onnx"
    half.write_bytes((out / "model_int8.onnx").read_bytes()[:500])
    wrong_task = "enhance" if qmodel.info.is_sr else "sr"
    for args in (["eval", str(bad), "--data", str(tmp_path)], ["eval", str(half), "--data", str(tmp_path)],
                 ["eval", str(out / "model_int8.tflite"), "--data", str(tmp_path), "--task", wrong_task]):
        assert main(args) != 0
    errs = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(errs) == 3 and all(e.startswith("error:") for e in errs)


def test_sr_tiles_cut_at_the_graph_radius_equal_the_whole_image(exported):
    """The radius read from the graph (a composed stem's mirror pad included) bounds how far the
    artifact looks: tiles overlapping by twice it give the whole image's bits."""
    from quantir.data.tiling import tiled_apply

    name, qmodel, out, *_ = exported
    if not qmodel.info.is_sr:
        pytest.skip("enhancers keep the default cross-fade")
    rt = load_runtime(out / "model_int8.tflite")
    if name.startswith("mobileone_sr"):  # stem (or the composed 5x5 head), two blocks, the output conv
        assert rt.radius == 4
    if rt.radius is None:
        pytest.skip("radius not derivable from this graph")
    img = natural_image(61, 83, seed=12)
    r = rt.radius
    tiled = tiled_apply(img, rt.run, scale=rt.scale, tile=4 * r + 8, overlap=2 * r, margin=r)
    assert np.array_equal(tiled, rt.run(img))
