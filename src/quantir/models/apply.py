"""Run a torch model (float or fake-quant) on uint8 photos: the one place pixel units are converted."""

from __future__ import annotations

import numpy as np
import torch


def to_model_units(pixels: torch.Tensor, pixel_max: float) -> torch.Tensor:
    """uint8-range pixel values (0..255) -> the model's input range (0..pixel_max)."""
    return pixels.float() * (pixel_max / 255.0)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module without any)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def run_levels(model: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 in, float HxWx3 out in 0..255 output levels (clipped, not rounded), on the model's device."""
    pixel_max = model.info.pixel_max
    x = to_model_units(torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None], pixel_max)
    y = model(x.to(module_device(model)))[0].permute(1, 2, 0).cpu().numpy() * (255.0 / pixel_max)
    return np.clip(y, 0.0, 255.0)


def run_uint8(model: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 in, uint8 out: what a deployment of ``model`` would write."""
    return np.clip(np.round(run_levels(model, img)), 0, 255).astype(np.uint8)
