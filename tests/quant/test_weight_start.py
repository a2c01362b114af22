"""quant/weight_start.py: AdaRound-style codes stay on the quantizer's grid and reconstruct better;
bias correction removes the mean output shift of the rounded weights."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantir.errors import ConfigError
from quantir.quant.config import KeepLayers, QuantConfig
from quantir.quant.weight_start import _find_convs, _grid, _rule_codes, adaround_codes, check_weight_start, weight_start


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(12, 3, 3, padding=1))


def _batches(n: int = 4) -> list[torch.Tensor]:
    """Smooth, correlated inputs like photos (independent noise makes nearest rounding optimal)."""
    torch.manual_seed(1)
    return [F.avg_pool2d(torch.rand(2, 3, 28, 28) * 255, 5, 1) for _ in range(n)]


def _middle(net: nn.Module, batches):
    """The middle conv as weight_start finds it, and its recorded float inputs."""
    sites = _find_convs(net, batches)
    assert [s.weight is m.weight for s, m in zip(sites, [net[0], net[2], net[4]])] == [True] * 3
    return sites[1], torch.cat(sites[1].inputs)


@pytest.mark.parametrize("bits", [8, 4])
def test_adaround_codes_are_neighbours_on_the_same_grid_and_reconstruct_better(bits):
    net, cfg = _net(), QuantConfig(weight_bits=bits, act_bits=bits)
    conv, x = _middle(net, _batches())
    scale, qmin, qmax = _grid(conv.weight.detach(), cfg)
    t = conv.weight.detach() / scale
    codes, row = adaround_codes(conv, x, cfg, iters=200)
    assert torch.equal(codes, torch.round(codes)) and int(codes.min()) >= qmin and int(codes.max()) <= qmax
    assert bool(((codes == torch.floor(t)) | (codes == torch.ceil(t)) | (codes == torch.round(t))).all())
    assert row["kept"] == "adaround" and row["mse_adaround"] < row["mse_rule"], row
    assert row["changed"] > 0


def test_weight_start_keeps_the_quantizers_scale_and_puts_weights_on_it():
    net, cfg = _net(), QuantConfig()
    before = [_grid(m.weight.detach(), cfg)[0] for m in net if isinstance(m, nn.Conv2d)]
    report = weight_start(net, _batches(), cfg, adaround=True, iters=100)
    assert len(report) == 3
    for m, s in zip([m for m in net if isinstance(m, nn.Conv2d)], before):
        after = _grid(m.weight.detach(), cfg)[0]
        torch.testing.assert_close(after, s, rtol=1e-6, atol=0)  # what WeightFakeQuantize will compute
        t = m.weight.detach() / after
        assert float((t - torch.round(t)).abs().max()) < 1e-4  # nearest rounding gives these codes back


@pytest.mark.parametrize("rule", ["nearest", "sum_preserving"])
def test_bias_correction_removes_the_mean_shift_of_the_rounded_weights(rule):
    net, cfg = _net(), QuantConfig(weight_rounding=rule)
    batches = _batches()
    conv, x = _middle(net, batches)
    w = conv.weight.detach().clone()
    scale, qmin, qmax = _grid(w, cfg)
    wq = _rule_codes(w / scale, qmin, qmax, cfg) * scale
    shift = (net[2]._conv_forward(x, wq, None) - net[2]._conv_forward(x, w, None)).mean(dim=(0, 2, 3))
    assert float(shift.abs().max()) > 1e-4  # something to correct
    fixed = copy.deepcopy(net)
    weight_start(fixed, batches, cfg, bias_correction=True)
    c = fixed[2]
    assert torch.equal(c.weight, conv.weight)  # only the bias moves
    left = (c._conv_forward(x, wq, c.bias) - net[2]._conv_forward(x, w, net[2].bias)).mean(dim=(0, 2, 3))
    assert float(left.abs().max()) < 1e-3 * float(shift.abs().max()) + 1e-5


def test_a_grid_the_start_cannot_know_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="weight_clip_percentile"):
        check_weight_start(QuantConfig(weight_clip_percentile=99.0))
    with pytest.raises(ConfigError, match="keep"):
        weight_start(_net(), _batches(), QuantConfig(weight_bits=4, act_bits=4, keep=KeepLayers(mode="float")),
                     adaround=True)
    from quantir.train.config import QATConfig

    with pytest.raises(ConfigError, match="qat.adaround"):
        QATConfig(adaround=True, quant=QuantConfig(weight_clip_percentile=99.0))
