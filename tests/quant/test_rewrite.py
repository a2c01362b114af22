"""The rewrites that open the integer path to user networks compute what the original network computed."""

import pytest
import torch

from quantir.data.task import ModelInfo
from quantir.models.protocol import WrappedModel
from quantir.quant.rewrite import RewrittenModel, export_nchw, rewrite_graph
from quantir.quant.support import UnsupportedModelError, inspect_model
from tests.fixtures import user_nets

FACTORIES = ["edsr_style", "compact_style", "compact_leaky", "span_style"]


@pytest.mark.parametrize("name", FACTORIES)
def test_rewritten_graph_computes_the_original(name):
    torch.manual_seed(0)
    net = getattr(user_nets, name)().eval()
    gm = export_nchw(net, torch.rand(2, 3, 16, 16))
    log = rewrite_graph(gm)
    assert any("PixelShuffle" in d for d in log.done) and not log.kept
    targets = {getattr(n.target, "__name__", "") for n in gm.graph.nodes if n.op == "call_function"}
    assert not targets & {"pixel_shuffle.default", "upsample_nearest2d.vec", "prelu.default", "silu_.default",
                          "div.Tensor", "sub.Tensor"}  # LeakyReLU stays (an exact int8 kernel)
    x = torch.rand(3, 3, 20, 28)  # another batch and size than the export example: shapes stay dynamic
    with torch.no_grad():
        want, got = net(x), gm(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_pixel_shuffle_becomes_one_depth_to_space_by_permuting_the_conv():
    net = user_nets.CompactStyle(scale=3, convs=1).eval()
    gm = export_nchw(net, torch.rand(2, 3, 12, 12))
    rewrite_graph(gm)
    with torch.no_grad():
        x = torch.rand(1, 3, 9, 13)
        assert torch.equal(gm(x), net(x))  # a permutation and an exact nearest: bit for bit


def test_unsupported_ops_fail_before_training_one_line_each():
    model = WrappedModel(user_nets.with_bicubic(), ModelInfo(task="sr", scale=2, pixel_max=1.0))
    with pytest.raises(UnsupportedModelError) as err:
        inspect_model(model, torch.rand(2, 3, 16, 16))
    lines = str(err.value).splitlines()
    assert lines[0].startswith("2 op(s) cannot be integer-exported")
    assert len(lines) == 3
    assert "upsample_bicubic2d" in lines[1] and "TFLite has no bicubic resize" in lines[1] and "user_nets.py" in lines[1]
    assert "cumsum" in lines[2] and "<top-level forward>" in lines[2]


def test_registered_models_are_left_alone(sr_model):
    model, problems = inspect_model(sr_model, torch.rand(2, 3, 16, 16) * 255)
    assert model is sr_model and problems == []


def test_rewritten_user_model_is_what_gets_quantized():
    model = WrappedModel(user_nets.edsr_style(), ModelInfo(task="sr", scale=2, pixel_max=255.0))
    rewritten, problems = inspect_model(model, torch.rand(2, 3, 16, 16) * 255)
    assert isinstance(rewritten, RewrittenModel) and problems == []
    assert rewritten.info == model.info
