"""An anchor net's residual sits on the output grid, so its add is an integer add: one rounding."""

import numpy as np
import pytest
import torch
from torchao.quantization.pt2e.fake_quantize import FixedQParamsFakeQuantize

from quantir.data.resize import downscale
from quantir.export import tflite as tfe
from quantir.export import tflite_graph as tg
from quantir.export.runtime import load_runtime
from quantir.models import create_model, reparameterize_model
from quantir.models.apply import run_uint8
from quantir.quant import checkpoint
from quantir.quant.api import convert, prepare_qat
from quantir.quant.config import QuantConfig
from quantir.quant.fake_quant import ActFakeQuantize
from tests.conftest import natural_image, short_sr_qat


def _qat(aligned: bool, model=None):
    make = (lambda: model) if model is not None else (
        lambda: create_model("mobileone_sr_anchor", channels=8, blocks=2, branches=2).eval())
    return short_sr_qat(make, QuantConfig(residual_on_output_grid=aligned))[0]  # the ranges move off the grid


def _output_add(path) -> tuple[list, tuple]:
    """(qparams of the inputs, qparams of the output) of the last ADD of a TFLite file."""
    model = tg.read(path.read_bytes())
    sg = model.subgraphs[0]
    add = [op for op in sg.operators if tg.op_name(model, op) == "ADD"][-1]
    qp = lambda i: (float(sg.tensors[i].quantization.scale[0]), int(sg.tensors[i].quantization.zeroPoint[0]))
    return [qp(i) for i in add.inputs], qp(add.outputs[0])


@pytest.mark.parametrize("aligned", [True, False])
def test_anchor_residual_takes_the_output_grid(aligned, tmp_path):
    q = _qat(aligned)
    path = tmp_path / "sr.tflite"
    tfe.export_int8(convert(q), path, {"task": "sr", "scale": 3, "pixel_max": 255.0})
    inputs, output = _output_add(path)
    assert output == (1.0, -128)
    inputs.remove((1.0, -128))  # the anchor: the input's codes, repeated
    (residual,) = inputs
    if aligned:  # the residual at the output's scale, zero point 0: code sum = output code
        assert residual == (1.0, 0)
    else:  # a range of its own: the add requantizes, a second rounding
        assert residual[0] != 1.0
    img = downscale(natural_image(60, 72, seed=9), 3)
    assert np.array_equal(load_runtime(path).run(img), run_uint8(q, img))  # still 0 LSB


@pytest.mark.parametrize("bits", [8, 4])
def test_residual_grid_only_for_eight_bit_activations(bits):
    """The low-bit simulations keep their learned k-bit residual (BENCHMARKS' ODM tables are unchanged)."""
    torch.manual_seed(0)
    q = prepare_qat(create_model("abpn").eval(), torch.rand(1, 3, 12, 12) * 255,
                    QuantConfig(act_bits=bits, weight_bits=bits))
    g = q.graph_module
    add = [n for n in g.graph.nodes if n.op == "call_function" and "add" in str(n.target)][-1]  # the anchor add
    (residual,) = [a for a in add.args if getattr(a, "op", None) == "call_module"
                   and a.args[0].target is not torch.ops.aten.cat.default]
    quantizer = getattr(g, residual.target)
    if bits == 8:
        assert isinstance(quantizer, FixedQParamsFakeQuantize)
        assert (float(quantizer.scale), int(quantizer.zero_point)) == (1.0, 0)
    else:
        assert isinstance(quantizer, ActFakeQuantize)  # a range of its own, observed then learned


def test_checkpoint_from_before_the_rule_rebuilds_with_its_learned_residual_range():
    """A QAT checkpoint without the key was trained with a residual range of its own: rebuilt so."""
    model = reparameterize_model(create_model("mobileone_sr_anchor", channels=8, blocks=2, branches=2)).eval()
    q = _qat(False, model)
    record = checkpoint.qat_record(q, (16, 16), model)
    del record["quant_config"]["residual_on_output_grid"]
    rebuilt = checkpoint.build_qat(record)
    x = torch.rand(1, 3, 20, 24) * 255
    with torch.no_grad():
        assert torch.equal(rebuilt(x), q(x))


class _Shifter(torch.nn.Module):
    """An anchor-style net whose residual adds ``shift`` (0..255 units) to every pixel."""

    def __init__(self, shift: float):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(shift)

    def forward(self, x):
        return torch.clamp(self.conv(x) + x, 0, 255)


@pytest.mark.parametrize("shift, warns", [(20.0, False), (180.0, True)])
def test_calibration_warns_when_a_grid_residual_clips(shift, warns, caplog):
    """+-128 levels hold SR corrections; a brightening of 180 levels clips, and calibration says so."""
    from quantir.data.task import ModelInfo
    from quantir.quant.api import calibrate, grid_residual_clipping, prepare_ptq

    x = torch.rand(2, 3, 16, 16) * 100
    q = prepare_ptq(_Shifter(shift).eval(), x[:1], QuantConfig(), info=ModelInfo(task="enhance", scale=1))
    (layer,) = q.grid_residuals.values()  # the one conv added to the input
    with caplog.at_level("WARNING", logger="quantir.quant.api"):
        calibrate(q, [x])
    assert ("clips on 100.00 %" in caplog.text) is warns, caplog.text
    with grid_residual_clipping(q, warn=False) as shares, torch.no_grad():
        q(x)
    assert shares == {layer: 1.0 if warns else 0.0}


def _composed_paper_net():
    from quantir.models.mobileone_sr import compose_stem

    torch.manual_seed(0)
    return compose_stem(reparameterize_model(create_model("mobileone_sr", channels=8, blocks=2, branches=2).eval()))


def test_composed_stem_residual_sum_takes_the_output_grid_and_its_pad_keeps_the_input_grid(tmp_path):
    """compose_stem's out + direct is one residual on the output grid (one rounding), and its mirror
    pad (slices + concats of the input) moves the input's codes without requantizing them."""
    q = _qat(True, _composed_paper_net())
    assert len(q.grid_residuals) == 1
    path = tmp_path / "composed.tflite"
    tfe.export_int8(convert(q), path, {"task": "sr", "scale": 3, "pixel_max": 255.0})
    inputs, output = _output_add(path)
    assert output == (1.0, -128) and sorted(inputs) == [(1.0, -128), (1.0, 0)]
    model = tg.read(path.read_bytes())
    sg = model.subgraphs[0]
    ops = [tg.op_name(model, op) for op in sg.operators]
    assert "MUL" not in ops and "SLICE" not in ops and ops.count("STRIDED_SLICE") == 8  # dynamic H and W
    for op in sg.operators:
        if tg.op_name(model, op) == "CONCATENATION" and len(sg.tensors[op.outputs[0]].shape) == 4:
            t = sg.tensors[op.outputs[0]]
            if t.shape[-1] == 3:  # the pads (the anchor's concat has 27 channels)
                assert (float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])) == (1.0, -128)
    for hw in ((20, 24), (17, 31)):  # sizes other than the conversion's: the slices count from the ends
        img = downscale(natural_image(hw[0] * 3, hw[1] * 3, seed=9), 3)
        assert np.array_equal(load_runtime(path).run(img), run_uint8(q, img))


def test_split_direct_keeps_a_fine_grid_and_adds_its_edge_branches_on_the_input_grid(tmp_path):
    """compose_stem(direct_split=R): the clamped direct conv takes +-R at zero point 0 (its clamp is
    its range, no MAXIMUM/MINIMUM left for it), the two edge branches are added to the anchor on
    the input grid, and out + fine is the residual on the output grid."""
    from quantir.models.mobileone_sr import compose_stem

    torch.manual_seed(0)
    fused = reparameterize_model(create_model("mobileone_sr", channels=8, blocks=2, branches=2).eval())
    q = _qat(True, compose_stem(fused, direct_split=8.0))
    path = tmp_path / "split.tflite"
    tfe.export_int8(convert(q), path, {"task": "sr", "scale": 3, "pixel_max": 255.0})
    model = tg.read(path.read_bytes())
    sg = model.subgraphs[0]
    qp = lambda i: (float(sg.tensors[i].quantization.scale[0]), int(sg.tensors[i].quantization.zeroPoint[0]))
    ops = [tg.op_name(model, op) for op in sg.operators]
    assert ops.count("MINIMUM") == 1 and "MAXIMUM" not in ops  # only the under branch's min(., 0)
    conv_outputs = [qp(op.outputs[0]) for op in sg.operators if tg.op_name(model, op) == "CONV_2D"]
    assert conv_outputs.count((np.float32(8.0 / 127).item(), 0)) == 1  # the fine part of direct
    adds = [([qp(i) for i in op.inputs], qp(op.outputs[0])) for op in sg.operators if tg.op_name(model, op) == "ADD"]
    assert [out for _, out in adds] == [(1.0, -128), (1.0, -128), (1.0, 0), (1.0, -128)]  # base, base, residual, output
    assert sorted(adds[-1][0]) == [(1.0, -128), (1.0, 0)]
    for hw in ((20, 24), (17, 31)):
        img = downscale(natural_image(hw[0] * 3, hw[1] * 3, seed=9), 3)
        assert np.array_equal(load_runtime(path).run(img), run_uint8(q, img))
