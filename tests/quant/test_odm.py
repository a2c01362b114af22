"""ODM: mismatch regulariser, cooperative gradient combination, switches."""

import math

import pytest
import torch

from quantir.models import create_model
from quantir.quant.api import prepare_qat, set_phase
from quantir.quant.config import ODMConfig, QuantConfig
from quantir.quant.fake_quant import ActFakeQuantize
from quantir.quant.odm import combine_gradients, cooperative_backward, mismatch_loss


@pytest.mark.parametrize("g_m,expected_sim", [([0.0, 1.0], 0.5), ([2.0, 0.0], 1.0), ([-1.0, 0.0], 0.0),
                                              ([1.0, 1.0], (1 / math.sqrt(2) + 1) / 2)])
def test_similarity_weight_follows_the_gradient_angle(g_m, expected_sim):
    g_r = torch.tensor([1.0, 0.0])
    grads, sims = combine_gradients([("l.weight", g_r)], [torch.tensor(g_m)], 1.0, 0.5, "model")
    assert sims == pytest.approx([expected_sim])
    assert torch.allclose(grads[0], g_r + 0.5 * expected_sim * torch.tensor(g_m))


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(2, 2, bias=False)
        self.l2 = torch.nn.Linear(2, 1, bias=False)


def _toy_losses(net):
    # Linear losses in each parameter, so the gradients are known in closed form:
    # layer 1: g_R = [[1, 0], [0, 0]], g_M = [[0, 1], [0, 0]] (orthogonal, sim 0.5)
    # layer 2: g_R = [[1, 1]],          g_M = [[-1, -1]]        (opposed, sim 0)
    w1, w2 = net.l1.weight, net.l2.weight
    loss_r = w1[0, 0] + w2.sum()
    loss_m = w1[0, 1] - w2.sum()
    return loss_r, loss_m


@pytest.mark.parametrize("granularity", ["layer", "model"])
def test_cooperative_update_on_a_two_layer_toy(granularity):
    net = TwoLayer()
    loss_r, loss_m = _toy_losses(net)
    sims = cooperative_backward(list(net.named_parameters()), loss_r, loss_m, lambda_m=2.0, granularity=granularity)
    if granularity == "layer":
        assert sims == pytest.approx([0.5, 0.0], abs=1e-6)
        assert torch.allclose(net.l1.weight.grad, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))  # 1*g_R + 2*0.5*g_M
        assert torch.allclose(net.l2.weight.grad, torch.tensor([[1.0, 1.0]]))  # opposed: regulariser ignored
    else:
        # whole model: g_R = (1,0,0,0,1,1), g_M = (0,1,0,0,-1,-1): cos = -2/(sqrt(3)*sqrt(3)) = -2/3
        sim = (1 - 2 / 3) / 2
        assert sims == pytest.approx([sim])
        assert torch.allclose(net.l2.weight.grad, torch.tensor([[1.0, 1.0]]) - 2.0 * sim)


def test_mismatch_detached_vs_ste():
    fq = ActFakeQuantize(quant_min=-128, quant_max=127)
    x = torch.linspace(-1.0, 3.0, 1000).requires_grad_()
    with torch.no_grad():
        fq(torch.linspace(-1.0, 2.0, 100))  # range [-1, 2]: values above 2 are clipped
    fq.disable_observer()
    fq.mismatch_mode = "detached"
    y = fq(x)
    m = fq.mismatch
    assert torch.isclose(m, torch.linalg.vector_norm(x.detach() - y.detach()))
    (g_detached,) = torch.autograd.grad(m, x)
    inside = x.detach() < 2.0 - 0.02
    assert g_detached[inside].abs().sum() > 0  # pulls in-range values to their grid points
    fq.mismatch_mode = "ste"
    fq(x)
    (g_ste,) = torch.autograd.grad(fq.mismatch, x)
    assert torch.count_nonzero(g_ste[inside]) == 0  # STE: only clipping error remains
    assert torch.count_nonzero(g_ste[~inside]) > 0


def test_odm_switch_records_mismatch_only_when_enabled():
    model = create_model("mobileone_sr_tiny")
    x = torch.rand(2, 3, 16, 16) * 255
    off = prepare_qat(model, x, QuantConfig())
    off(x)
    with pytest.raises(RuntimeError, match="no mismatch"):
        mismatch_loss(off)
    on = prepare_qat(model, x, QuantConfig(odm=ODMConfig(mismatch_weight=1e-5, detach_q=True)))
    with torch.no_grad():
        on(x)
    set_phase(on, "learn")
    out = on(x)
    loss_m = mismatch_loss(on)
    assert loss_m.item() > 0 and loss_m.requires_grad
    params = [(n, p) for n, p in on.named_parameters() if p.requires_grad]
    sims = cooperative_backward(params, (out - 100).abs().mean(), loss_m, lambda_m=1e-5, granularity="layer")
    assert sims and all(0.0 <= s <= 1.0 for s in sims)
    assert all(p.grad is not None for _, p in params if "weight" in _)


def test_mismatch_weight_is_on_the_papers_pixel_scale():
    """The paper's L1 is on 0..255 pixels, quantir's on 0..1: lambda_M / pixel_max keeps its balance."""
    odm = ODMConfig(mismatch_weight=1e-5)
    assert odm.effective_weight(255.0) == 1e-5 / 255.0
    assert odm.effective_weight(1.0) == 1e-5
    assert ODMConfig().effective_weight(255.0) == 0.0
