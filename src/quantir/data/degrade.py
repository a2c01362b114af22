"""A synthetic 'phone photo' degradation, so enhancement can be trained and tested without DPED.

This is a **proxy**, not a camera model. Like DPED (one phone's photos paired with a DSLR's), it
simulates one device: a fixed colour and tone characteristic (white-balance gains, desaturation,
a gamma and a contrast curve) that an enhancer can learn to invert, with a small per-photo jitter,
plus per-photo blur, signal-dependent noise and JPEG compression. Real phone-to-DSLR pairs also
differ in dynamic range, demosaicing, lens shading and small misalignments. Given the same seed,
the result is identical on every machine.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image, ImageFilter

from quantir.errors import require

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class DegradationConfig:
    gains: tuple[float, float, float] = (1.06, 1.0, 0.88)  # the simulated phone's white balance (warm cast)
    saturation: float = 0.8  # < 1 desaturates
    gamma: float = 1.2  # > 1 darkens mid-tones
    contrast: float = 0.85  # < 1 flattens around mid-grey
    jitter: float = 0.03  # relative per-photo variation of the four settings above
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    noise_sigma: tuple[float, float] = (0.5, 4.0)  # in 8-bit levels at mid-grey
    jpeg_quality: tuple[int, int] = (55, 92)

    def __post_init__(self):
        require(all(g > 0 for g in self.gains), "gains must be positive")
        require(self.saturation >= 0 and self.gamma > 0 and self.contrast > 0, "saturation must be >= 0, gamma and contrast > 0")
        require(0 <= self.jitter < 0.5, "jitter must be in [0, 0.5)")
        for name in ("blur_sigma", "noise_sigma", "jpeg_quality"):
            lo, hi = getattr(self, name)
            require(lo <= hi, f"{name}: low bound above high bound")
        require(1 <= self.jpeg_quality[0] <= 100 and self.jpeg_quality[1] <= 100, "jpeg_quality must be in 1..100")


def degrade(rgb: np.ndarray, rng: np.random.Generator, cfg: DegradationConfig = DegradationConfig()) -> np.ndarray:
    """Degrade a clean uint8 RGB image; all randomness comes from ``rng``."""
    j = lambda: 1.0 + rng.uniform(-cfg.jitter, cfg.jitter)  # noqa: E731
    x = rgb.astype(np.float32) / 255.0
    x = np.clip(x * np.asarray([g * j() for g in cfg.gains], dtype=np.float32), 0.0, 1.0)
    luma = (x @ _LUMA)[..., None]
    x = np.clip(luma + (x - luma) * cfg.saturation * j(), 0.0, 1.0)
    x = x ** (cfg.gamma * j())
    x = np.clip(0.5 + (x - 0.5) * cfg.contrast * j(), 0.0, 1.0)
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
