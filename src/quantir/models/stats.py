"""Parameter and MAC counts (conv layers dominate every model here)."""

from __future__ import annotations

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def macs_per_pixel(model: nn.Module, size: int = 64) -> float:
    """Multiply-accumulates of all convolutions per input pixel, measured on a size x size input."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        k = mod.weight[0].numel()  # in_channels/groups * kh * kw
        total += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total / float(size * size)
