"""Channel equalization across the global skip of mobileone_sr (issue 15's cross-layer equalization).

``quantir analyze`` puts most of the INT8 loss of the paper network on smooth photos on two
tensors: the stem output f0 and the skip sum f0 + body(f0). Both are quantized per tensor, so
channels with a small range get few of the 256 levels. Scaling channel c of both by 1 / r_c (r_c
< 1 widens it) and folding r_c into the weights that read them leaves the float function unchanged:

* stem: output channel c (weight and bias) / r_c   -> f0_c / r_c (a ReLU stem commutes: r_c > 0)
* first body conv: input channel c * r_c           -> reads the same values as before
* last body conv: output channel c (and bias) / r_c -> body_c / r_c (its ReLU commutes)
* output conv: input channel c * r_c               -> the same output

r_c = (R_c / max R)^alpha with R_c the channel's largest |value| over both tensors on calibration
batches; alpha = 1 equalizes fully, smaller alphas leave more range to the weights of the convs
that absorb r_c (CLE's usual trade-off between activation and weight precision).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from quantir.errors import ConfigError
from quantir.models.mobileone_sr import MobileOneSR


def _fused(block) -> torch.nn.Conv2d:
    if not hasattr(block, "fused"):
        raise ConfigError("equalize_skip needs the fused (reparameterized) model")
    return block.fused


@torch.no_grad()
def skip_ranges(model: MobileOneSR, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Per-channel max |value| of the stem output and of the skip sum over ``batches``."""
    r = None
    for x in batches:
        f0 = model.stem_act(model.stem(x))
        s = model.body(f0) + f0
        m = torch.maximum(f0.abs().amax(dim=(0, 2, 3)), s.abs().amax(dim=(0, 2, 3)))
        r = m if r is None else torch.maximum(r, m)
    if r is None:
        raise ValueError("equalize_skip needs at least one calibration batch")
    return r


@torch.no_grad()
def equalize_skip(model: MobileOneSR, batches: Iterable[torch.Tensor], alpha: float = 1.0) -> torch.Tensor:
    """Rescale the skip channels of a fused mobileone_sr in place (float function unchanged);
    returns the factors r_c."""
    if not isinstance(model, MobileOneSR) or model.cfg.skip != "add" or model.cfg.blocks < 1:
        raise ConfigError("qat.equalize_skip supports mobileone_sr with skip 'add' and at least one block")
    if not 0.0 < alpha <= 1.0:
        raise ConfigError(f"qat.equalize_skip must be in (0, 1], got {alpha}")
    first, last = _fused(model.body[0]), _fused(model.body[-1])
    ranges = skip_ranges(model, batches).clamp_min(1e-8)
    r = (ranges / ranges.max()) ** alpha
    model.stem.weight.div_(r.view(-1, 1, 1, 1))
    model.stem.bias.div_(r)
    first.weight.mul_(r.view(1, -1, 1, 1))
    last.weight.div_(r.view(-1, 1, 1, 1))  # after the first-conv update when they are the same conv
    last.bias.div_(r)
    model.out.weight.mul_(r.view(1, -1, 1, 1))
    return r
