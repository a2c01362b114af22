"""Re-parameterization (timm's protocol) and BatchNorm recalibration before fusion."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from quantir.models.protocol import Reparameterizable


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Return a deep copy with every ``Reparameterizable`` block fused to its deploy form."""
    fused = copy.deepcopy(model)
    for module in list(fused.modules()):
        if isinstance(module, Reparameterizable) and module is not fused:
            module.reparameterize()
    fused.reparameterized = True
    return fused.eval()


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], n_batches: int = 64) -> int:
    """Reset BN statistics and re-estimate them as a cumulative average over ``n_batches`` inputs.

    Only the BN layers run in train mode, so dropout-like layers stay deterministic. EMA'd or
    long-trained running statistics drift from what the final weights produce; fusing stale
    statistics into the deploy convs is a silent accuracy loss. Returns the batches used;
    ``n_batches`` 0 keeps the running statistics (a checkpoint trained on other data than these).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or n_batches <= 0:  # 0 batches: keep the running statistics the model trained with
        return 0
    was_training = model.training
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts equally
        bn.train()
    used = 0
    for x in batches:
        if used >= n_batches:
            break
        model(x)
        used += 1
    for bn in bns:
        bn.momentum = 0.1
    model.train(was_training)
    return used
