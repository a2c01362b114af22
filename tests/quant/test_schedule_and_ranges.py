import numpy as np
import pytest
import torch

from quantir.models import create_model
from quantir.quant.api import calibrate, prepare_ptq, prepare_qat, set_phase
from quantir.quant.config import QuantConfig
from quantir.quant.fake_quant import ActFakeQuantize, WeightFakeQuantize
from quantir.quant.observers import RangeMethod, RangeObserver


def _obs(method, data, **kw):
    obs = RangeObserver(method=method, quant_min=-128, quant_max=127, **kw)
    for chunk in data:
        obs(chunk)
    return obs


def test_minmax_and_ema_ranges():
    data = [torch.tensor([-1.0, 2.0]), torch.tensor([0.0, 4.0])]
    lo, hi = _obs(RangeMethod.MINMAX, data).range()
    assert (float(lo), float(hi)) == (-1.0, 4.0)
    lo, hi = _obs(RangeMethod.EMA, data, averaging_constant=0.5).range()
    assert (float(lo), float(hi)) == (-0.5, 3.0)


def test_percentile_of_a_known_distribution():
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(200_000, generator=g) for _ in range(3)]
    lo, hi = _obs(RangeMethod.PERCENTILE, data, percentile=99.0).range()
    assert abs(float(hi) - 2.3263) < 0.03 and abs(float(lo) + 2.3263) < 0.03  # N(0,1) 99th percentile


def test_mse_clips_heavy_tails_but_not_uniform():
    g = torch.Generator().manual_seed(0)
    uniform = torch.rand(100_000, generator=g) * 2 - 1
    obs = RangeObserver(method="mse", quant_min=-8, quant_max=7)
    obs(uniform)
    lo, hi = obs.range()
    assert float(hi) > 0.85 and float(lo) < -0.85
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    laplace[:10] = 40.0  # outliers
    obs = RangeObserver(method="mse", quant_min=-8, quant_max=7)
    obs(laplace)
    lo, hi = obs.range()
    assert float(hi) < 15.0 and float(obs.max_val) >= 40.0


def _qmodel(**cfg):
    model = create_model("mobileone_sr_tiny")
    return prepare_qat(model, torch.rand(2, 3, 16, 16) * 255, QuantConfig(**cfg))


def _act_scales(q):
    return torch.tensor([float(m.scale) for m in q.modules() if isinstance(m, ActFakeQuantize)])


def _weight_scales(q):
    return torch.cat([m.scale.clone() for m in q.modules() if isinstance(m, WeightFakeQuantize)])


def _train(q, steps=3, lr=1e-2):
    opt = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        x = torch.rand(2, 3, 16, 16) * 255
        loss = (q(x) - 128).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_freeze_schedule_really_freezes():
    q = _qmodel()
    with torch.no_grad():
        q(torch.rand(2, 3, 16, 16) * 255)
    set_phase(q, "learn")
    before = _act_scales(q)
    _train(q)
    assert not torch.allclose(before, _act_scales(q)), "learn phase must move activation ranges"
    set_phase(q, "freeze_ranges")
    frozen, w_before = _act_scales(q), _weight_scales(q)
    _train(q)
    assert torch.equal(frozen, _act_scales(q)), "freeze_ranges must stop activation ranges"
    assert not torch.equal(w_before, _weight_scales(q)), "weight scales still follow the weights"
    set_phase(q, "freeze")
    w_frozen = _weight_scales(q)
    for p in q.parameters():
        p.requires_grad_(p.requires_grad and p.dim() > 1)
    _train(q)
    with torch.no_grad():
        q(torch.rand(1, 3, 16, 16) * 255)
    assert torch.equal(w_frozen, _weight_scales(q)) and torch.equal(frozen, _act_scales(q))


def test_observe_phase_tracks_data_and_ptq_calibration_freezes():
    q = prepare_ptq(create_model("mobileone_sr_tiny"), torch.rand(2, 3, 16, 16) * 255,
                    QuantConfig(act_range=RangeMethod.MINMAX))
    used = calibrate(q, (torch.rand(1, 3, 16, 16) * 255 for _ in range(5)), n_batches=3)
    assert used == 3
    assert all(not p.requires_grad for m in q.modules() if isinstance(m, ActFakeQuantize) for p in m.parameters())
    first_fq = next(m for m in q.modules() if isinstance(m, ActFakeQuantize))
    assert float(first_fq.activation_post_process.max_val) > 0


def test_low_bit_simulation_grid():
    q = _qmodel(act_bits=4, weight_bits=3)
    acts = [m for m in q.modules() if isinstance(m, ActFakeQuantize)]
    weights = [m for m in q.modules() if isinstance(m, WeightFakeQuantize)]
    assert all((m.quant_min, m.quant_max) == (-8, 7) for m in acts)
    assert all((m.quant_min, m.quant_max) == (-3, 3) for m in weights)
    with torch.no_grad():
        q.eval()
        y = q(torch.rand(1, 3, 16, 16) * 255)
    assert torch.isfinite(y).all()


def test_weight_clipping_correction_learns_gamma():
    torch.manual_seed(0)
    q = _qmodel(weight_clip_percentile=99.0)
    with torch.no_grad():
        q(torch.rand(2, 3, 16, 16) * 255)
    set_phase(q, "learn")
    gammas = [m.gamma for m in q.modules() if isinstance(m, WeightFakeQuantize)]
    assert all(g.requires_grad for g in gammas)
    # Adam moves each gamma by about lr per step: 0.05 keeps the ranges far above SCALE_FLOOR
    # (lr 0.5 drove gamma to ~0.001 and the floor, not the formula, set the scales).
    _train(q, steps=2, lr=0.05)
    assert any(abs(float(g) - 1.0) > 1e-6 for g in gammas)
    assert all(float(g) > 0.5 for g in gammas)
    # The range is the 99th percentile of |W| per output channel (not the max) times gamma.
    with torch.no_grad():
        q(torch.rand(1, 3, 16, 16) * 255)
    for fq, w in _weight_fqs(q):
        expected = torch.quantile(w.abs().reshape(w.shape[0], -1), 0.99, dim=1) * float(fq.gamma) / 127
        assert torch.allclose(fq.scale, expected, rtol=1e-5)
        assert (fq.scale * 127 < w.abs().reshape(w.shape[0], -1).amax(1)).any()


def _weight_fqs(q):
    gm = q.graph_module
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), WeightFakeQuantize):
            yield gm.get_submodule(node.target), gm.get_parameter(node.args[0].target).detach()
