"""Sum-preserving weight rounding: each kernel keeps its gain, and the artifact stores the trained codes."""

import numpy as np
import pytest
import torch

from quantir.config import from_dict
from quantir.data.resize import downscale
from quantir.errors import ConfigError
from quantir.export import tflite_graph as tg
from quantir.export.api import export_artifacts
from quantir.models import create_model, reparameterize_model
from quantir.quant import checkpoint
from quantir.quant.api import convert
from quantir.quant.config import QuantConfig
from quantir.quant.fake_quant import WeightFakeQuantize, sum_preserving_codes
from tests.conftest import natural_image, short_sr_qat


def _codes_case() -> torch.Tensor:
    torch.manual_seed(0)
    t = torch.randn(16, 8, 3, 3) * 40
    t[0, 0] = torch.tensor([[0.5, 1.5, 2.5], [-0.5, -1.5, 0.5], [0.5, 0.5, 0.5]])  # ties everywhere
    t[1, 0] = torch.tensor([[126.9, 126.8, 126.7], [-126.6, 3.4, 3.4], [3.4, 3.4, 3.4]])  # near the grid's ends
    t[2, 0] = torch.tensor([[200.0, 130.0, 127.4], [-300.0, 0.4, 0.4], [0.4, 0.4, 0.4]])  # clipped taps
    return t


def test_codes_keep_every_kernel_sum_within_one_level_of_each_tap():
    t = _codes_case()
    codes = sum_preserving_codes(t, -127, 127)
    clipped = t.double().clamp(-127, 127)
    assert torch.equal(codes, torch.round(codes))
    assert codes.abs().max() <= 127
    assert torch.all(codes >= torch.floor(clipped)) and torch.all(codes <= torch.ceil(clipped))
    assert torch.equal(codes.double().sum((2, 3)), torch.round(clipped.sum((2, 3))))
    nearest = torch.clamp(torch.round(t), -127, 127)
    assert not torch.equal(codes, nearest)  # the case exercises the rule: nearest misses some sums
    assert (codes != nearest).float().mean() < 0.25  # it moves few taps
    assert torch.equal(sum_preserving_codes(t, -127, 127), codes)  # deterministic (stable ranking)


def test_codes_are_nearest_for_one_tap_kernels_and_on_grid_weights():
    t = torch.randn(8, 4, 1, 1) * 50
    assert torch.equal(sum_preserving_codes(t, -127, 127), torch.clamp(torch.round(t), -127, 127))
    on_grid = sum_preserving_codes(_codes_case(), -127, 127)
    assert torch.equal(sum_preserving_codes(on_grid, -127, 127), on_grid)  # snapping twice changes nothing


def test_weight_fake_quant_forward_is_its_snap_with_a_straight_through_gradient():
    fq = WeightFakeQuantize(rounding="sum_preserving")
    w = (torch.randn(6, 3, 3, 3) * 0.1).requires_grad_()
    y = fq(w)  # observer on: the scale follows the weights
    assert torch.equal(y.detach(), fq.snap(w))
    scale = fq.scale.view(-1, 1, 1, 1)
    assert torch.equal(torch.round(y.detach() / scale).sum((2, 3)),
                       torch.round((w.detach().double() / scale.double()).sum((2, 3))).float())
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    nearest = WeightFakeQuantize()
    assert torch.equal(nearest(w).detach(), nearest.snap(w))  # the default rule: convert_pt2e's kernel


def test_config_rejects_unknown_rounding_and_learned_clipping():
    with pytest.raises(ConfigError, match="weight_rounding"):
        from_dict(QuantConfig, {"weight_rounding": "stochastic"})
    with pytest.raises(ConfigError, match="weight_rounding"):
        QuantConfig(weight_rounding="sum_preserving", weight_clip_percentile=99.0)


def _qat(rounding: str):
    return short_sr_qat(lambda: reparameterize_model(create_model("mobileone_sr_tiny")).eval(),
                        QuantConfig(weight_rounding=rounding))


def _tflite_filters(path) -> list[np.ndarray]:
    """The int8 filters of every CONV_2D / DEPTHWISE_CONV_2D, as [O, kh, kw, I] arrays."""
    model = tg.read(path.read_bytes())
    sg = model.subgraphs[0]
    out = []
    for op in sg.operators:
        if tg.op_name(model, op) in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            t = sg.tensors[op.inputs[1]]
            out.append(np.frombuffer(bytes(bytearray(model.buffers[t.buffer].data)), np.int8).reshape(t.shape))
    return out


def test_artifact_stores_the_sum_preserving_codes_at_zero_lsb(tmp_path):
    q, model = _qat("sum_preserving")
    gm = q.graph_module
    weights = [(fq, gm.get_parameter(n.args[0].target)) for n in gm.graph.nodes
               if n.op == "call_module" and isinstance(fq := gm.get_submodule(n.target), WeightFakeQuantize)]
    trained = [torch.round(fq.snap(w) / fq.scale.view(-1, 1, 1, 1)) for fq, w in weights]
    nearest = [torch.clamp(torch.round(w / fq.scale.view(-1, 1, 1, 1)), -127, 127) for fq, w in weights]
    assert any(not torch.equal(a, b) for a, b in zip(trained, nearest))  # the rule changed some codes
    images = [downscale(natural_image(60, 72, seed=k), 3) for k in (7, 8)]
    res = export_artifacts(convert(q), model, tmp_path, parity_images=images, reference=q)
    for backend in ("tflite", "onnx"):
        assert res["parity"].backends[backend].max_lsb == 0
    stored = {c.tobytes() for c in _tflite_filters(tmp_path / "model_int8.tflite")}
    for codes in trained:  # torch OIHW -> TFLite OHWI (depthwise: 1HWC)
        ohwi = codes.permute(0, 2, 3, 1).numpy().astype(np.int8)
        assert ohwi.tobytes() in stored or codes.permute(1, 2, 3, 0).numpy().astype(np.int8).tobytes() in stored


def test_checkpoint_rebuilds_with_its_rounding_and_old_ones_with_nearest():
    q, model = _qat("sum_preserving")
    record = checkpoint.qat_record(q, (16, 16), model)
    x = torch.rand(1, 3, 20, 24) * 255
    with torch.no_grad():
        assert torch.equal(checkpoint.build_qat(record)(x), q(x))
        del record["quant_config"]["weight_rounding"]  # written before the rule was a choice
        old = checkpoint.build_qat(record)
    assert old.config.weight_rounding == "nearest"
