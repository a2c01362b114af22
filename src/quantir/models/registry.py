"""Model registry: ``@register_model`` on a factory, ``create_model(name, **overrides)`` to build.

Variants are rows of a dataclass table (timm style): a factory receives its variant's config
with the caller's overrides applied through ``dataclasses.replace``, so an unknown override
fails loudly instead of being swallowed by ``**kwargs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch.nn as nn

from quantir.errors import ConfigError

_REGISTRY: dict[str, tuple[Callable, object, str]] = {}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a runtime needs to feed a model: task, scale, pixel range and size constraints."""

    task: str  # "sr" or "enhance"
    scale: int = 1
    pixel_max: float = 255.0  # inputs/outputs span [0, pixel_max]
    size_multiple: int = 1  # H and W the core graph needs to be divisible by

    @property
    def io_scale(self) -> float:
        """int8 scale that maps 0..255 pixel levels losslessly (zero point -128)."""
        return self.pixel_max / 255.0


def register_model(name: str, cfg, doc: str = ""):
    """Register ``factory(cfg) -> nn.Module`` under ``name`` with default config ``cfg``."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = (factory, cfg, doc or (factory.__doc__ or "").strip().splitlines()[0])
        return factory

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_config(name: str, **overrides):
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    cfg = _REGISTRY[name][1]
    valid = {f.name for f in dataclasses.fields(cfg)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ConfigError(f"model {name!r} has no option {bad[0]!r}; options: {', '.join(sorted(valid))}")
    return dataclasses.replace(cfg, **overrides)


def create_model(name: str, **overrides) -> nn.Module:
    cfg = model_config(name, **overrides)
    model = _REGISTRY[name][0](cfg)
    model.model_name = name
    model.model_cfg = cfg
    return model


def describe_models() -> list[tuple[str, str]]:
    return [(n, _REGISTRY[n][2]) for n in list_models()]
