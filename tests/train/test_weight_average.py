"""The weight average: the deep-copy EMA's numbers, without a copy of the model."""

import copy

import torch

from quantir.train.weight_average import WeightAverage


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 3, 3, padding=1))


def _copy_rule(ema, model, decay):
    """The deep-copy EMA this class replaced (loop.py before 2026-12-05), as the reference."""
    with torch.no_grad():
        for (_, e), (_, m) in zip(ema.state_dict().items(), model.state_dict().items()):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(m.detach(), alpha=1.0 - decay)
            else:
                e.copy_(m)


def _train(model, avg, ref, steps=12):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        d = WeightAverage.warmup_decay(0.9, step)
        avg.update(model, d)
        _copy_rule(ref, model, d)


def test_average_equals_the_deep_copy_ema_bit_for_bit():
    model = _net()
    avg, ref = WeightAverage(model), copy.deepcopy(model)
    _train(model, avg, ref)
    x = torch.rand(1, 3, 8, 8)
    ref.eval()
    with avg.swapped(model) as m:
        m.eval()
        assert torch.equal(m(x), ref(x))
        for k, v in ref.state_dict().items():
            if v.dtype.is_floating_point:
                assert torch.equal(m.state_dict()[k], v), k


def test_swap_gives_the_model_its_own_weights_back_and_apply_keeps_the_average():
    model = _net()
    avg = WeightAverage(model)
    _train(model, avg, copy.deepcopy(model))
    own = {k: v.clone() for k, v in model.state_dict().items()}
    with avg.swapped(model):
        averaged = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(own[k], averaged[k]) for k in own)
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k]), k
    assert model.state_dict()["1.num_batches_tracked"] == 12  # integer buffers are the model's, never averaged
    avg.apply(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, averaged[k]), k


def test_resume_state_round_trips_and_reads_the_old_full_copy():
    model = _net()
    avg = WeightAverage(model)
    _train(model, avg, copy.deepcopy(model))
    fresh = WeightAverage(_net())
    fresh.load_state_dict(avg.state_dict())
    assert all(torch.equal(fresh.shadow[k], v) for k, v in avg.shadow.items())
    old_format = dict(avg.state_dict(), **{"1.num_batches_tracked": torch.tensor(5)})  # the deep copy's state_dict
    fresh = WeightAverage(_net())
    fresh.load_state_dict(old_format)
    assert set(fresh.shadow) == set(avg.shadow)


def test_a_buffer_that_changes_size_follows_the_model():
    """An observer's reservoir sample grows while it observes: the average takes its new shape."""
    m = torch.nn.Module()
    m.w = torch.nn.Parameter(torch.ones(2))
    m.register_buffer("sample", torch.empty(0))
    avg = WeightAverage(m)
    m.sample = torch.arange(3.0)
    avg.update(m, 0.5)
    with avg.swapped(m):
        assert torch.equal(m.sample, torch.arange(3.0)) and torch.equal(m.w.detach(), torch.ones(2))
