"""A synthetic 'phone photo' degradation, so enhancement can be trained and tested without DPED.

This is a **proxy**, not a camera model: real phone-to-DSLR pairs (DPED) also differ in
dynamic range, demosaicing, lens shading and small misalignments. The proxy applies, in order:
a colour cast (per-channel gains), a tone curve (gamma and contrast), Gaussian blur, signal-
dependent noise and JPEG compression, each with parameters drawn from ``DegradationConfig``.
Given the same seed, the result is identical on every machine.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageFilter


@dataclasses.dataclass(frozen=True)
class DegradationConfig:
    cast: float = 0.12  # max relative per-channel gain deviation
    gamma: tuple[float, float] = (0.75, 1.35)
    contrast: tuple[float, float] = (0.8, 1.15)
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    noise_sigma: tuple[float, float] = (0.5, 4.0)  # in 8-bit levels at mid-grey
    jpeg_quality: tuple[int, int] = (55, 92)

    def __post_init__(self):
        from quantir.config import require

        require(0 <= self.cast < 1, "degradation.cast must be in [0, 1)")
        for name in ("gamma", "contrast", "blur_sigma", "noise_sigma", "jpeg_quality"):
            lo, hi = getattr(self, name)
            require(lo <= hi, f"degradation.{name}: low bound above high bound")
        require(1 <= self.jpeg_quality[0] <= 100 and self.jpeg_quality[1] <= 100, "jpeg_quality must be in 1..100")


def degrade(rgb: np.ndarray, rng: np.random.Generator, cfg: DegradationConfig = DegradationConfig()) -> np.ndarray:
    """Degrade a clean uint8 RGB image; all randomness comes from ``rng``."""
    x = rgb.astype(np.float32) / 255.0
    gains = 1.0 + rng.uniform(-cfg.cast, cfg.cast, size=3).astype(np.float32)
    x = np.clip(x * gains, 0.0, 1.0)
    gamma = rng.uniform(*cfg.gamma)
    contrast = rng.uniform(*cfg.contrast)
    x = x ** gamma
    x = np.clip(0.5 + (x - 0.5) * contrast, 0.0, 1.0)
    img = Image.fromarray(np.round(x * 255.0).astype(np.uint8), "RGB")
    sigma = rng.uniform(*cfg.blur_sigma)
    if sigma > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(sigma)))
    y = np.asarray(img, dtype=np.float32)
    noise_level = rng.uniform(*cfg.noise_sigma)
    std = noise_level * np.sqrt(np.clip(y, 1.0, 255.0) / 128.0)  # shot-noise-like: grows with signal
    y = np.clip(y + rng.standard_normal(y.shape).astype(np.float32) * std, 0, 255)
    buf = io.BytesIO()
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    Image.fromarray(np.round(y).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


def stable_seed(name: str, seed: int = 0) -> int:
    """A seed derived from a file name, identical across processes and Python versions."""
    h = 2166136261
    for ch in f"{seed}:{name}".encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h
