"""Resampling with Pillow's antialiased bicubic (MATLAB ``imresize``-like), uint8 in and out.

One implementation for training LR, evaluation LR and the bicubic baseline, so all three agree.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def mod_crop(img: np.ndarray, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if img.ndim == 2:
        return np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC))
    return np.asarray(Image.fromarray(img, "RGB").resize((width, height), Image.BICUBIC))


def downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Antialiased bicubic downscale of an image whose size is a multiple of ``factor``."""
    h, w = img.shape[:2]
    if h % factor or w % factor:
        raise ValueError(f"size {w}x{h} is not a multiple of {factor}; mod_crop first")
    return resize(img, w // factor, h // factor)


def upscale(img: np.ndarray, factor: int) -> np.ndarray:
    h, w = img.shape[:2]
    return resize(img, w * factor, h * factor)


def auto_hr_factor(long_side: int) -> int:
    """Downscale that turns a JPEG wallpaper into clean 'HR' (docs/sample-data.md): /4 for 4-5K, else /2."""
    return 4 if long_side >= 4000 else 2


def make_clean_hr(img: np.ndarray, factor: int | None = None) -> np.ndarray:
    """Remove JPEG blocking and sensor noise by an antialiased downscale (``factor=None``: automatic)."""
    f = auto_hr_factor(max(img.shape[:2])) if factor is None else factor
    if f == 1:
        return img
    return downscale(mod_crop(img, f), f)
