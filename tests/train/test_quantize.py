"""Acceptance (bring your own model): ``quantir quantize`` end to end on user-style SR networks."""

import json

import pytest
import torch

from quantir.cli import main
from quantir.export import tflite_graph as tg
from tests.fixtures import user_nets

FIXTURES = "tests/fixtures/user_nets.py"
RUNS = {  # (factory, extra options): PTQ for two (one from a learned weight start), QAT by distillation for one
    "edsr": ("edsr_style", ["--pixel-max", "255"]),
    "compact": ("compact_style", ["--qat", "--steps", "3", "--batch", "2"]),
    "span": ("span_style", ["--adaround", "--bias-correction"]),  # the learned weight start ships 0 LSB too
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    from tests.conftest import natural_image

    d = tmp_path_factory.mktemp("photos")
    for k in range(3):
        Image.fromarray(natural_image(72 + 8 * k, 96, seed=k)).save(d / f"p{k}.png")
    return d


@pytest.fixture(scope="module", params=list(RUNS))
def quantized(request, photos, tmp_path_factory):
    factory, extra = RUNS[request.param]
    out = tmp_path_factory.mktemp(request.param) / "int8"
    weights = out.parent / "weights.pt"
    torch.manual_seed(1)
    torch.save({"params": getattr(user_nets, factory)().state_dict()}, weights)  # BasicSR-style wrapper
    code = main(["quantize", f"{FIXTURES}:{factory}", "--weights", str(weights), "--calib", str(photos),
                 "--out", str(out), "--crop", "24", *extra])
    assert code == 0
    return request.param, out


def test_every_op_int8_and_bit_exact(quantized):
    name, out = quantized
    for f in ("model_int8.tflite", "model_int8.onnx", "model_float.tflite", "parity.json", "model_card.md",
              "config.yaml"):
        assert (out / f).is_file(), f
    parity = json.loads((out / "parity.json").read_text())
    assert parity["tflite"]["all_int8"] and parity["tflite"]["non_int8_ops"] == []
    assert parity["tflite"]["max_lsb"] == 0, parity["tflite"]
    assert parity["onnx"]["all_int8"]
    assert parity["onnx"]["max_lsb"] == 0, parity["onnx"]


def test_pixel_shuffle_is_one_depth_to_space_and_shapes_stay_dynamic(quantized):
    name, out = quantized
    model = tg.read((out / "model_int8.tflite").read_bytes())
    ops = [r["op"] for r in tg.op_table(model)]
    assert ops.count("DEPTH_TO_SPACE") == 1 and "RESHAPE" not in ops and "TRANSPOSE" not in ops
    io = tg.io_details(model)
    assert io["inputs"][0]["shape"] == [1, -1, -1, 3] and io["inputs"][0]["dtype"] == "int8"


def test_unsupported_op_fails_before_anything_is_written(photos, tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["quantize", f"{FIXTURES}:with_bicubic", "--calib", str(photos), "--out", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: 2 op(s) cannot be integer-exported")
    assert "upsample_bicubic2d" in err[1] and "cumsum" in err[2]


def test_check_reports_without_calibrating(photos, capsys):
    spec = "tests.fixtures.user_nets:span_style"  # the package.module:factory form
    assert main(["quantize", spec, "--calib", str(photos), "--out", "unused", "--check"]) == 0
    out = capsys.readouterr().out
    assert "x2 super-resolution, pixels 0..1" in out and "every op is int8" in out


def test_weights_that_do_not_fit_are_one_line(photos, tmp_path, capsys):
    bad = tmp_path / "other.pt"
    torch.save(user_nets.CompactStyle(feats=4).state_dict(), bad)
    code = main(["quantize", f"{FIXTURES}:compact_style", "--weights", str(bad), "--calib", str(photos),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not fit CompactStyle" in err and "another shape" in err


def test_a_quantir_fp32_checkpoint_quantizes_too(photos, tmp_path):
    from quantir.models import create_model
    from quantir.quant import checkpoint

    model = create_model("mobileone_sr", channels=8, blocks=1, branches=1)
    path = tmp_path / "fp32.safetensors"
    checkpoint.save(checkpoint.float_record(model), path)
    out = tmp_path / "int8"
    assert main(["quantize", str(path), "--calib", str(photos), "--out", str(out), "--crop", "24",
                 "--format", "tflite"]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["tflite"]["max_lsb"] == 0 and parity["tflite"]["all_int8"]


def test_float_islands_need_the_switch_and_are_listed(photos, tmp_path, capsys):
    """ELU has no int8 kernel: refused for a fully-integer artifact (one line, nothing written);
    with --allow-float-ops the artifact is written and parity.json names the float ops."""
    spec = f"{FIXTURES}:with_elu"
    out = tmp_path / "strict"
    assert main(["quantize", spec, "--calib", str(photos), "--out", str(out), "--crop", "24"]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert any("would run in float" in ln for ln in err) and any(ln.startswith("elu at act") for ln in err)
    assert not out.exists()
    out = tmp_path / "islands"
    assert main(["quantize", spec, "--calib", str(photos), "--out", str(out), "--crop", "24",
                 "--allow-float-ops"]) == 0
    tfl = json.loads((out / "parity.json").read_text())["tflite"]
    assert not tfl["all_int8"] and {"DEQUANTIZE", "EXP", "QUANTIZE"} <= set(tfl["non_int8_ops"])
    assert tfl["n_images"] > 0 and tfl["psnr_vs_fakequant_db"] > 45  # measured, not assumed exact
    card = (out / "model_card.md").read_text()
    assert "no: " in card and "EXP x1" in card and " in float |" in card  # the island, op by op


def test_model_card_lists_the_rewrites_and_counts_macs(quantized):
    name, out = quantized
    card = (out / "model_card.md").read_text()
    assert "rewritten for the integer path" in card and "depth" in card.lower()
    macs = next(ln for ln in card.splitlines() if ln.startswith("- MACs per input pixel"))
    assert not macs.startswith("- MACs per input pixel: 0 ")
    assert ("scales learned in QAT" in card) == (name == "compact")


def test_auto_weight_rounding_keeps_the_rule_closer_to_fp32(photos):
    """Both rules are calibrated on the same crops and scored on other crops; the one with the higher
    fake-quant vs FP32 PSNR is returned, prepared with that rule (sum-preserving only if strictly better)."""
    from quantir.data.task import ModelInfo
    from quantir.models.protocol import as_restoration_model
    from quantir.quant.api import calibrate, prepare_ptq
    from quantir.quant.config import QuantConfig
    from quantir.quant.fake_quant import WeightFakeQuantize
    from quantir.train.quantize_run import choose_weight_rounding, crop_pool, fidelity_psnr

    torch.manual_seed(3)
    info = ModelInfo(task="sr", scale=2, pixel_max=1.0)
    model = as_restoration_model(user_nets.compact_style().eval(), info)
    example = torch.rand(2, 3, 16, 16)
    calib, held_out = crop_pool(info, photos, 6, 16, 0), crop_pool(info, photos, 4, 16, 4)
    prepared, scores = choose_weight_rounding(model, example, QuantConfig(), prepare_ptq, calib, held_out)
    again = {}
    for rule in ("nearest", "sum_preserving"):  # each rule on its own reproduces its score
        q = prepare_ptq(model, example, QuantConfig(weight_rounding=rule))
        calibrate(q, calib)
        with torch.no_grad():
            again[rule] = fidelity_psnr(q, held_out, [model(x) for x in held_out], 1.0)
    assert again == {k: scores[k] for k in again} and scores["nearest"] != scores["sum_preserving"]
    assert scores["chosen"] == max(again, key=again.get)
    rules = {m.rounding for m in prepared.graph_module.modules() if isinstance(m, WeightFakeQuantize)}
    assert rules == {scores["chosen"]}


def test_auto_weight_rounding_writes_the_chosen_rule(photos, tmp_path):
    import yaml

    weights = tmp_path / "w.pt"
    torch.manual_seed(1)
    torch.save(user_nets.edsr_style().state_dict(), weights)
    out = tmp_path / "int8"
    assert main(["quantize", f"{FIXTURES}:edsr_style", "--weights", str(weights), "--calib", str(photos),
                 "--out", str(out), "--crop", "24", "--pixel-max", "255", "--weight-rounding", "auto",
                 "--format", "tflite"]) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["weight_rounding"] in ("nearest", "sum_preserving")  # resolved: rerunning it needs no choice
    assert json.loads((out / "parity.json").read_text())["tflite"]["max_lsb"] == 0
