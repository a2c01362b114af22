"""Networks from outside quantir: a factory in a file or package, a plain state_dict, spandrel.

* ``load_factory("path/to/file.py:make_net")`` or ``("package.module:make_net")`` calls the
  factory (a function or class) with no arguments;
* ``load_state_dict`` reads .safetensors, or .pt/.pth with ``torch.load(weights_only=True)``:
  PyTorch's restricted unpickler, which builds tensors and plain containers only, so no code in
  the file runs; the usual wrappers (BasicSR's ``params_ema``/``params``, ``state_dict``,
  ``model``) and DDP's ``module.`` prefix are unwrapped;
* ``load_spandrel`` reads any of the architectures spandrel knows (optional extra);
* ``detect_info`` runs the model once to find its scale and guess its pixel range.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantir.data.task import ModelInfo, Task
from quantir.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator")


def is_factory_spec(spec: str) -> bool:
    """'file.py:name' or 'package.module:name' (not a Windows drive letter)."""
    left, sep, right = spec.rpartition(":")
    return bool(sep and left and right.isidentifier() and (left.endswith(".py") or all(
        p.isidentifier() for p in left.split("."))))


def load_factory(spec: str) -> nn.Module:
    """Build a network from 'path/to/file.py:factory' or 'package.module:factory' (called with no arguments)."""
    if not is_factory_spec(spec):
        raise ConfigError(f"{spec!r}: expected path/to/file.py:factory or package.module:factory")
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found")
        mod_name = f"quantir_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look the module up by name
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ModelFileError(f"{target}: cannot import ({err})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ModelFileError(f"{spec}: {name!r} is not a function or class in {target}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelFileError(f"{spec}: returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (.safetensors, or .pt/.pth read without running code), unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: weights file not found")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types; the first line says which
        raise ModelFileError(f"{path}: not a readable weights file ({str(err).strip().splitlines()[0][:160]})") from None
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if key is None:
            raise ModelFileError(f"{path}: no tensors found (keys: {', '.join(map(str, list(state)[:6]))})")
        state = state[key]
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not load strictly into ``model`` (the first keys named), or None if it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{len(missing)} missing ({', '.join(missing[:3])})" if missing else "",
             f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})" if unexpected else "",
             f"{len(shapes)} of another shape ({shapes[0]}: {tuple(state[shapes[0]].shape)} vs "
             f"{tuple(own[shapes[0]].shape)})" if shapes else ""]
    return "; ".join(p for p in parts if p)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state_dict into ``model`` strictly; a mismatch is one line naming the first keys."""
    state = load_state_dict(path)
    why = state_mismatch(model, state)
    if why:
        raise ModelFileError(f"{path} does not fit {type(model).__name__}: {why}")
    model.load_state_dict(state)
    return model


def load_spandrel(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """A network spandrel recognises in ``path``, with the scale it reports (inputs 0..1, its convention)."""
    try:
        import spandrel
    except ImportError as err:
        raise ConfigError(f"{path}: loading a model file without a factory needs spandrel "
                          f"(pip install 'quantir[spandrel]'; {err})") from None
    try:
        desc = spandrel.ModelLoader().load_from_file(str(path))
    except Exception as err:
        raise ModelFileError(f"{path}: spandrel cannot load it ({str(err).strip().splitlines()[0][:160]})") from None
    scale = int(desc.scale)
    info = ModelInfo(task=Task.SR if scale > 1 else Task.ENHANCE, scale=scale, pixel_max=1.0,
                     size_multiple=int(getattr(desc, "size_requirements").multiple_of or 1))
    return desc.model.eval(), info


def _probe(h: int = 24, w: int = 32) -> torch.Tensor:
    """A smooth colour image in 0..1 (gradients and a blob): a deterministic stand-in for a photo."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.3 * np.sin(x / 5 + c) * np.cos(y / 7) + 0.15 * ((x - 12) ** 2 + (y - 10) ** 2 < 30)
                    for c in range(3)])
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))[None]


@torch.no_grad()
def detect_info(model: nn.Module, task: str | None = None, scale: int | None = None,
                pixel_max: float | None = None, size_multiple: int = 1) -> ModelInfo:
    """Scale from one forward pass (output size / input size); pixel range given, or guessed.

    The guess feeds the probe image at 0..1 and at 0..255 and keeps the range whose output stays
    closer to the (upscaled) input: a trained restoration net roughly reproduces its input, at its
    own range. When neither fits clearly it says so and takes 0..1 (PyTorch's convention).
    """
    model = model.eval()
    x = _probe()
    try:
        y = model(x)
    except Exception as err:
        raise ModelFileError(f"{type(model).__name__} fails on a 1x3x24x32 input: {str(err).splitlines()[0][:160]}") from None
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != 3:
        raise ModelFileError(f"{type(model).__name__} must map Bx3xHxW to Bx3x(sH)x(sW); got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    sh, sw = y.shape[-2] / x.shape[-2], y.shape[-1] / x.shape[-1]
    found = int(round(sh))
    if sh != sw or sh != found or found < 1:
        raise ModelFileError(f"{type(model).__name__}: output {tuple(y.shape[-2:])} is not an integer multiple of "
                             f"the input {tuple(x.shape[-2:])}")
    if scale is not None and scale != found:
        raise ConfigError(f"--scale {scale} given, but the model upscales x{found}")
    if task is None:
        task = Task.SR if found > 1 else Task.ENHANCE
    if pixel_max is None:
        errors = {}
        for r in (1.0, 255.0):
            out = model(x * r) / r
            ref = F.interpolate(x, scale_factor=found, mode="bicubic", align_corners=False) if found > 1 else x
            errors[r] = float((out - ref).abs().mean())
        pixel_max = min(errors, key=errors.get)
        if max(errors.values()) < 2 * min(errors.values()):
            pixel_max = 1.0
            log.warning("pixel range unclear from one forward pass (error %.3g at 0..1, %.3g at 0..255): assuming "
                        "0..1; pass --pixel-max 255 if the model expects 0..255", errors[1.0], errors[255.0])
        else:
            log.info("pixel range: 0..%g (detected)", pixel_max)
    return ModelInfo(task=task, scale=found, pixel_max=float(pixel_max), size_multiple=size_multiple)
