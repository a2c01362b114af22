"""Skip-channel equalization of mobileone_sr: the float function stays, the channel ranges even out."""

import pytest
import torch

from quantir.errors import ConfigError
from quantir.models import create_model, reparameterize_model
from quantir.quant.equalize import equalize_skip, skip_ranges


@pytest.mark.parametrize("options", [{"blocks": 2, "stem_act": False}, {"blocks": 1, "stem_act": True}])
def test_equalize_keeps_the_float_output_and_evens_the_skip_ranges(options):
    torch.manual_seed(0)
    model = reparameterize_model(create_model("mobileone_sr", channels=8, branches=2, **options)).eval()
    with torch.no_grad():
        model.stem.weight[:4] *= 0.05  # four channels far narrower than the rest
    x = torch.rand(2, 3, 20, 20) * 255
    before = model(x)
    r0 = skip_ranges(model, [x])
    r = equalize_skip(model, [x], alpha=1.0)
    after = skip_ranges(model, [x])
    assert torch.allclose(model(x), before, atol=1e-3, rtol=0)
    assert (r0.max() / r0.min()) > 5 and torch.allclose(after, after.max().expand_as(after), rtol=1e-4)
    assert float(r.max()) == pytest.approx(1.0) and bool((r > 0).all())


def test_equalize_refuses_what_it_cannot_rescale():
    with pytest.raises(ConfigError, match="mobileone_sr"):
        equalize_skip(reparameterize_model(create_model("abpn")), [torch.rand(1, 3, 8, 8)])
    with pytest.raises(ConfigError, match="fused"):
        equalize_skip(create_model("mobileone_sr", channels=8, branches=2, blocks=1), [torch.rand(1, 3, 8, 8)])
