"""quantir analyze: per-tensor INT8 error in dB, on a tiny QAT model with one quantizer made coarse."""

import json

import numpy as np
import torch

from quantir.data.datasets import Pair
from quantir.data.resize import downscale
from quantir.evaluate.analyze import analyze, center_crops, write_analysis
from quantir.models import create_model, reparameterize_model
from quantir.models.apply import run_uint8
from quantir.quant import checkpoint
from quantir.quant.api import Phase, calibrate, prepare_qat, set_phase
from quantir.quant.config import QuantConfig
from quantir.quant.fake_quant import ActFakeQuantize
from tests.conftest import natural_image


def _qat_model():
    torch.manual_seed(0)
    fp32 = reparameterize_model(create_model("mobileone_sr_tiny"))
    pm = fp32.info.pixel_max
    q = prepare_qat(fp32, torch.rand(2, 3, 24, 24) * pm, QuantConfig())
    calibrate(q, (torch.from_numpy(natural_image(24, 24, seed=k)).permute(2, 0, 1)[None].float() / 255 * pm
                  for k in range(3)))
    set_phase(q, Phase.FREEZE)
    return q.eval(), fp32


def _pairs(n=2):
    out = []
    for k in range(n):
        hr = natural_image(72, 96, seed=10 + k)
        out.append(Pair(f"im{k}", downscale(hr, 3), hr))
    return out


def _body_act_quantizers(q):
    """Activation quantizers that read a conv output (not the image I/O)."""
    gm = q.graph_module
    names = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ActFakeQuantize):
            src = node.args[0]
            if src.op == "call_function" and "conv" in str(src.target) and node.target not in names:
                names.append(node.target)
    return names


def test_a_coarse_quantizer_ranks_first_and_gains_the_most_when_left_in_float():
    q, fp32 = _qat_model()
    pairs = _pairs()
    victim = _body_act_quantizers(q)[-1]  # the anchor residual is on the output grid (fixed): not a candidate
    with torch.no_grad():
        q.graph_module.get_submodule(victim).scale.mul_(24.0)  # a grid 24x too coarse for its tensor
    before = [run_uint8(q, p.input) for p in pairs]
    a = analyze(q, pairs, fp32)
    top = a.tensors[0]
    assert top.quantizer == victim and top.kind == "activation"
    assert top.gain_db == max(r.gain_db for r in a.tensors) and top.gain_db > 0.05
    assert top.gain_db > 3 * a.tensors[1].gain_db
    assert top.cost_db == max(r.cost_db for r in a.tensors if r.kind == "activation")
    others = [r.sqnr_db for r in a.tensors if r.kind == "activation" and r.quantizer != victim]
    assert top.sqnr_db < min(others)
    assert {r.kind for r in a.tensors} == {"weight", "activation"}
    assert all(np.isfinite(r.sqnr_db) for r in a.tensors if r.kind == "weight")
    assert abs(a.psnr_quantized - a.psnr_exact) < 0.05 and a.psnr_float > a.psnr_exact
    assert set(a.per_image) == {"im0", "im1"} and a.psnr_fp32 is not None
    # the model comes back exactly as it was: integer-exact ops restored, every quantizer on
    assert all(np.array_equal(b, run_uint8(q, p.input)) for b, p in zip(before, pairs))


def test_written_json_and_chart(tmp_path):
    q, _ = _qat_model()
    a = analyze(q, _pairs(1))
    js, png = write_analysis(a, tmp_path / "out")
    data = json.loads(js.read_text())
    assert data["n_images"] == 1 and len(data["tensors"]) == len(a.tensors) and data["psnr_fp32"] is None
    assert png.stat().st_size > 1000


def test_center_crops_keep_input_and_target_aligned():
    hr = natural_image(90, 120, seed=3)
    p = Pair("x", downscale(hr, 3), hr)
    (c,) = center_crops([p], 16, 3, 4)
    assert c.input.shape == (16, 16, 3) and c.target.shape == (48, 48, 3)
    y, x = (30 - 16) // 2, (40 - 16) // 2
    assert np.array_equal(c.target, hr[3 * y:3 * y + 48, 3 * x:3 * x + 48])


def test_cli_analyzes_a_qat_checkpoint(tmp_path, photo_dir, capsys):
    from quantir.cli import main

    q, fp32 = _qat_model()
    ckpt = tmp_path / "checkpoints" / f"qat_final{checkpoint.SUFFIX}"
    ckpt.parent.mkdir()
    checkpoint.save(checkpoint.qat_record(q, (24, 24), fp32), ckpt)
    checkpoint.save(checkpoint.float_record(fp32), ckpt.with_name(f"deploy_fp32{checkpoint.SUFFIX}"))
    assert main(["analyze", str(tmp_path), "--data", str(photo_dir), "--crop", "24", "--limit", "2",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out and "FP32" in out
    assert (tmp_path / "analysis" / "analysis.json").is_file() and (tmp_path / "analysis" / "analysis.png").is_file()


def test_cli_refuses_a_float_checkpoint_in_one_line(tmp_path, photo_dir, capsys):
    from quantir.cli import main

    _, fp32 = _qat_model()
    path = tmp_path / f"fp32{checkpoint.SUFFIX}"
    checkpoint.save(checkpoint.float_record(fp32), path)
    assert main(["analyze", str(path), "--data", str(photo_dir)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not a QAT checkpoint" in err and "\n" not in err
    assert not (tmp_path / "analysis").exists()
