import pytest
import torch
from torch.export import Dim

from quantir.models import create_model, list_models, recalibrate_bn, reparameterize_model
from quantir.models.registry import model_config
from quantir.models.stats import count_params
from quantir.errors import ConfigError


@pytest.mark.parametrize("name,kw,expected", [
    ("qatie_unet", {"channels": 32}, 915_331), ("qatie_unet", {"channels": 16}, 230_083),
    ("qatie_unet", {"channels": 24}, 515_811), ("qatie_unet", {"channels": 64}, 3_651_331),
    ("abpn", {}, 42_539),
    ("edsr_baseline", {"scale": 2}, 1_369_859), ("edsr_baseline", {"scale": 3}, 1_554_499),
    ("edsr_baseline", {}, 1_517_571),  # EDSR-baseline as its paper and the ODM lineage count it
])
def test_parameter_counts(name, kw, expected):
    assert count_params(create_model(name, **kw)) == expected


def test_mobileone_deploy_parameters_match_the_paper():
    assert count_params(reparameterize_model(create_model("mobileone_sr"))) == 82_683
    assert count_params(create_model("mobileone_sr", deploy=True)) == 82_683


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.mark.parametrize("name", ["mobileone_sr", "mobileone_sr_fast", "qatie_unet_int8"])
def test_fused_equals_multi_branch(name):
    model = create_model(name).eval()
    _randomize_bn(model)
    pm = model.info.pixel_max
    x = torch.rand(2, 3, 24, 32) * pm
    fused = reparameterize_model(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        a, b = model(x), fused(x)
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-4


def test_recalibrate_bn_reestimates_statistics():
    model = create_model("mobileone_sr_tiny")
    bn = model.body[0].identity
    bn.running_mean.fill_(100.0)
    batches = [torch.rand(2, 3, 16, 16) * 255 for _ in range(3)]
    assert recalibrate_bn(model, iter(batches), n_batches=2) == 2
    stem_out = model.stem(torch.cat(batches[:2]))
    assert torch.allclose(bn.running_mean, stem_out.mean(dim=(0, 2, 3)), atol=1e-2)
    bn.running_mean.fill_(100.0)  # zero batches keep the statistics (bn_recal_batches: 0)
    assert recalibrate_bn(model, iter(batches), n_batches=0) == 0
    assert torch.all(bn.running_mean == 100.0)


@pytest.mark.parametrize("name", list_models())
def test_torch_export_dynamic_hw_and_odd_sizes(name):
    model = create_model(name).eval()
    size = 48
    dims = {0: Dim("b", min=1, max=64), 2: Dim("h", min=16, max=1024), 3: Dim("w", min=16, max=1024)}
    ep = torch.export.export(model, (torch.rand(2, 3, size, size),), dynamic_shapes=(dims,))
    s = model.info.scale
    with torch.no_grad():
        y = ep.module()(torch.rand(1, 3, 37, 29) * model.info.pixel_max)
    assert tuple(y.shape) == (1, 3, 37 * s, 29 * s)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_smoke(name):
    model = create_model(name, **({"channels": 8} if name.startswith("qatie") else {}))
    x = torch.rand(2, 3, 48, 48) * model.info.pixel_max
    model(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("nope")
    with pytest.raises(ConfigError, match="no option"):
        model_config("abpn", width=3)


def test_int8_unet_core_equals_forward_on_multiples_of_8():
    model = create_model("qatie_unet_int8", channels=8).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.2)
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model.export_module()(x), model(x))
