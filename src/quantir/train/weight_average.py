"""Exponential moving average of a model's weights, kept as tensors beside the model.

The average used to live in a deep copy of the model. A QAT model is a torch.export graph, which
cannot be deep-copied, so QAT could not average its weights at all. Here the average is a dict of
the model's floating state (parameters, BN statistics, learned quantizer ranges) and is swapped
into the model for validation and for the final weights. The arithmetic is the copy's, so an FP32
stage trains and returns the same numbers as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class WeightAverage:
    """``update`` after every optimiser step; ``swapped(model)`` to run the average; ``apply`` to keep it."""

    def __init__(self, model: torch.nn.Module):
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @staticmethod
    def warmup_decay(decay: float, step: int) -> float:
        """The decay at ``step``: low at first, so early averages are not dominated by the initial weights."""
        return min(decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow.get(k)
            if s is None:
                continue
            if s.shape == v.shape:
                s.mul_(decay).add_(v.detach(), alpha=1.0 - decay)
            else:  # a buffer that changes size (an observer's reservoir sample) follows the model
                self.shadow[k] = v.detach().clone()

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        """Copy the average into the model's tensors (in place: optimisers and graphs keep their references)."""
        state = model.state_dict()
        for k, s in self.shadow.items():
            state[k].copy_(s)

    @contextlib.contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The model with the average in it; its own weights come back on exit."""
        state = model.state_dict()
        backup = {k: state[k].detach().clone() for k in self.shadow}
        self.apply(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, b in backup.items():
                    state[k].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        """Take the saved averages of the tensors this model has (older checkpoints also hold integer buffers)."""
        for k, s in self.shadow.items():
            if k in saved and saved[k].shape == s.shape:
                s.copy_(saved[k])
