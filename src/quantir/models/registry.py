"""Model registry: ``@register_model`` on a factory, ``create_model(name, **overrides)`` to build.

Variants are rows of a dataclass table (timm style): a factory receives its variant's config
with the caller's overrides applied through ``dataclasses.replace``, so an unknown override
fails loudly instead of being swallowed by ``**kwargs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from quantir.data.task import ModelInfo
from quantir.errors import ConfigError
from quantir.models.protocol import RestorationModel
from quantir.models.reparam import reparameterize_model

__all__ = ["ModelInfo", "create_model", "describe_models", "list_models", "model_config", "register_model"]

_REGISTRY: dict[str, tuple[Callable, object, str]] = {}


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


def create_model(name: str, deploy: bool = False, **overrides) -> RestorationModel:
    """Build a registered model; ``deploy=True`` gives its fused (re-parameterized) form.

    A config with a ``deploy`` field builds the fused blocks directly; any other model is built
    and fused with ``reparameterize_model`` (its BatchNorms folded), the structure a fused
    checkpoint's state dict was saved from.
    """
    has_deploy_field = "deploy" in {f.name for f in dataclasses.fields(model_config(name))}
    if deploy and has_deploy_field:
        overrides = dict(overrides, deploy=True)
    cfg = model_config(name, **overrides)
    model = _REGISTRY[name][0](cfg)
    model.model_name = name
    model.model_cfg = cfg
    return reparameterize_model(model) if deploy and not has_deploy_field else model


def describe_models() -> list[tuple[str, str]]:
    return [(n, _REGISTRY[n][2]) for n in list_models()]
