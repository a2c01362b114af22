"""compose_stem: the paper net's linear stem folded into the convs that read it (issue 15)."""

import numpy as np
import pytest
import torch

from quantir.errors import ConfigError
from quantir.models import create_model, reparameterize_model
from quantir.models.layers import symmetric_pad
from quantir.models.mobileone_sr import compose_stem
from quantir.quant import checkpoint
from quantir.quant.api import refresh_weight_qparams
from quantir.quant.config import QuantConfig
from tests.conftest import short_sr_qat


def _fused(anchor=False, blocks=3):
    torch.manual_seed(0)
    model = create_model("mobileone_sr", channels=8, blocks=blocks, branches=2, anchor=anchor)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    model.eval()
    fused = reparameterize_model(model).double()
    fused.clamp_output = False
    return fused


def test_symmetric_pad_is_numpys():
    x = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    for pad in (1, 2, 3):
        ref = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric")
        assert np.array_equal(symmetric_pad(x, pad).numpy(), ref)


@pytest.mark.parametrize("anchor", [False, True])
def test_composed_equals_fused_inside_the_image(anchor):
    """Exact (float64) at every output whose receptive field lies inside the image; only the band
    the border padding reaches differs."""
    blocks = 3
    fused = _fused(anchor, blocks)
    composed = compose_stem(fused)
    assert composed.cfg.composed_stem and composed.model_name == "mobileone_sr" and fused.cfg.composed_stem is False
    x = torch.rand(1, 3, 40, 44, dtype=torch.float64) * 255
    with torch.no_grad():
        diff = (fused(x) - composed(x)).abs().amax(dim=(0, 1))
    radius = 3 * (blocks + 2)  # HR px: stem, the blocks and the output conv, one LR px each
    assert diff[radius:-radius, radius:-radius].max() < 1e-9
    assert diff[:radius].max() > 1e-3  # the border band differs (zero-padded f0 vs mirror-padded input)


def test_compose_stem_refuses_what_it_cannot_compose():
    with pytest.raises(ConfigError, match="linear stem"):
        compose_stem(reparameterize_model(create_model("mobileone_sr_anchor", channels=8, blocks=2, branches=2)))
    with pytest.raises(ConfigError, match="fused"):
        compose_stem(create_model("mobileone_sr", channels=8, blocks=2, branches=2))
    with pytest.raises(ConfigError, match="composed_stem needs deploy"):
        create_model("mobileone_sr", channels=8, blocks=2, composed_stem=True)


def test_qat_checkpoint_of_a_composed_model_rebuilds_the_same_model(tmp_path):
    fused = reparameterize_model(create_model("mobileone_sr", channels=8, blocks=2, branches=2).eval())
    q, _ = short_sr_qat(lambda: compose_stem(fused), QuantConfig(weight_rounding="sum_preserving"))
    refresh_weight_qparams(q, torch.rand(1, 3, 16, 16) * 255)
    path = tmp_path / "qat.safetensors"
    checkpoint.save(checkpoint.qat_record(q, (16, 16), fused), path)
    record = checkpoint.load(path)
    assert record["model_cfg"]["composed_stem"] is True
    rebuilt = checkpoint.build(record)
    x = torch.rand(1, 3, 14, 18) * 255
    with torch.no_grad():
        assert torch.equal(rebuilt(x), q(x))
    assert not checkpoint.build_float(record["float"]).cfg.composed_stem  # the reference stays the fused original


def test_split_direct_is_the_same_function():
    """clamp(d, -R, R) + relu(d - R) + min(d + R, 0) = d: the split composed net equals the unsplit
    one everywhere (float64), and the split needs the composed form."""
    fused = _fused()
    whole, split = compose_stem(fused), compose_stem(fused, direct_split=4.0)
    assert split.cfg.direct_split == 4.0
    x = torch.rand(1, 3, 20, 22, dtype=torch.float64) * 255
    with torch.no_grad():
        d = whole.direct(symmetric_pad(x, 2))
        assert d.abs().max() > 4.0 and (d.abs() < 4.0).any()  # both sides of the split are exercised
        assert (whole(x) - split(x)).abs().max() < 1e-9
    with pytest.raises(ConfigError, match="direct_split needs composed_stem"):
        create_model("mobileone_sr", channels=8, blocks=2, direct_split=4.0)
