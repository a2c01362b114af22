"""The model protocol, written down: what the quantizer, exporters and trainer rely on.

Every registered model subclasses ``RestorationModel``; nothing probes for these attributes.

* ``info`` (``ModelInfo``): task, scale, pixel range and size multiple; set in ``__init__``.
* ``export_module()``: the graph that gets quantized and converted (the model itself unless it
  has pad/crop glue around a core that needs sizes divisible by ``info.size_multiple``).
* ``clamp_output``: SR models clamp their output only while it is True (the recipe trains them
  unclamped and quantizes clamped); models whose output always clamps ignore it.
* ``model_name`` / ``model_cfg``: the registry name and config row, set by ``create_model``, so a
  checkpoint can rebuild the module.
* ``reparameterized``: True on the fused copy ``reparameterize_model`` returns.
* blocks (any submodule) that train multi-branch and deploy fused implement ``Reparameterizable``;
  a model config with a ``deploy`` field can build that fused form directly (``create_model(...,
  deploy=True)``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch.nn as nn

from quantir.data.task import ModelInfo
from quantir.errors import ConfigError


@runtime_checkable
class Reparameterizable(Protocol):
    def reparameterize(self) -> None:
        """Fold the training-time branches into the deploy form, in place and exactly."""


class RestorationModel(nn.Module):
    """Base class of every registered image-to-image model (see the module docstring)."""

    info: ModelInfo
    clamp_output: bool = True
    model_name: str | None = None
    model_cfg: object = None
    reparameterized: bool = False

    def export_module(self) -> nn.Module:
        return self


class WrappedModel(RestorationModel):
    """Any image-to-image ``nn.Module`` with the ``ModelInfo`` it was declared with."""

    def __init__(self, net: nn.Module, info: ModelInfo):
        super().__init__()
        self.net, self.info = net, info

    def forward(self, x):
        return self.net(x)


def as_restoration_model(model: nn.Module, info: ModelInfo | None = None) -> RestorationModel:
    """A registered model as it is; a plain module wrapped with ``info`` (which it then needs)."""
    if isinstance(model, RestorationModel):
        if info is not None and info != model.info:
            raise ConfigError(f"info={info} contradicts the model's own {model.info}")
        return model
    if info is None:
        raise ConfigError(f"{type(model).__name__} is not a quantir model: pass info=ModelInfo(task=..., scale=..., "
                          "pixel_max=...) to say what it computes")
    return WrappedModel(model, info)
