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

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:  # a traced graph (a user's rewritten network): its convolutions are ops, not modules
        return _graph_conv_macs(model, size) / float(size * size)
    handles = [m.register_forward_hook(hook) for m in convs]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total / float(size * size)


def _graph_conv_macs(model: nn.Module, size: int) -> float:
    """Convolution MACs of any module, from PyTorch's FLOP counter (2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
    aten = torch.ops.aten
    convs = (aten.convolution, aten.conv2d, aten._convolution)
    return sum(v for op, v in counter.get_flop_counts()["Global"].items() if op in convs) / 2
