"""Acceptance: convert() equals the fake-quant forward bit for bit after QAT steps with learned ranges."""

import pytest
import torch

from quantir.models import create_model
from quantir.quant.api import convert, prepare_qat, set_phase
from quantir.quant.config import QuantConfig
from quantir.quant.fake_quant import ActFakeQuantize
from quantir.quant.graph_check import float_islands

MODELS = [("mobileone_sr", {"channels": 8, "blocks": 2, "branches": 2}), ("abpn", {}),
          ("qatie_unet_int8", {"channels": 8})]


def _qat_steps(name, kw, config=QuantConfig(), steps=6):
    torch.manual_seed(0)
    model = create_model(name, **kw)
    pm, s = model.info.pixel_max, model.info.scale
    qmodel = prepare_qat(model, torch.rand(2, 3, 32, 32) * pm, config)
    with torch.no_grad():
        qmodel(torch.rand(4, 3, 32, 32) * pm)  # observe: initial ranges
    set_phase(qmodel, "learn")
    scales0 = [float(m.scale) for m in qmodel.modules() if isinstance(m, ActFakeQuantize)]
    opt = torch.optim.Adam(qmodel.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.rand(4, 3, 32, 32) * pm
        target = torch.nn.functional.interpolate(x, scale_factor=s) if s > 1 else x.flip(1)
        loss = (qmodel(x) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    scales1 = [float(m.scale) for m in qmodel.modules() if isinstance(m, ActFakeQuantize)]
    return qmodel, scales0, scales1


@pytest.mark.parametrize("name,kw", MODELS)
def test_convert_is_bit_exact_with_fake_quant(name, kw):
    qmodel, s0, s1 = _qat_steps(name, kw)
    assert any(abs(a - b) > 1e-7 for a, b in zip(s0, s1)), "activation ranges did not learn"
    pm = qmodel.info.pixel_max
    example = torch.rand(1, 3, 32, 32) * pm
    int_model = convert(qmodel, example)
    qmodel.eval()
    x = torch.rand(2, 3, 40, 48) * pm
    with torch.no_grad():
        assert torch.equal(qmodel(x), int_model(x))
    assert float_islands(int_model.graph_module) == [] and float_islands(int_model.export_graph) == []


def test_float_islands_are_detected():
    """A graph op whose output is not requantized is reported (here: the output clamp left unquantized)."""
    qmodel, _, _ = _qat_steps("abpn", {}, steps=1)
    int_model = convert(qmodel, torch.rand(1, 3, 32, 32) * 255)
    graph = int_model.export_graph.graph  # the plain graph handed to the converters
    quant = next(n for n in graph.nodes if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
                 and n.args[0].target == torch.ops.aten.add.Tensor)
    quant.replace_all_uses_with(quant.args[0])  # drop the requantization after the anchor add
    assert "aten.add.Tensor" in float_islands(int_model.export_graph)
