"""PSNR and SSIM in the two conventions restoration papers use (numpy only).

* RGB, MAI style: all three channels, no border shave, data range 255.
* Y, literature style: BT.601 luma ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on 0..255
  values, ``shave`` pixels removed at every border (``shave = scale`` for SR).

SSIM follows Wang et al. 2004 as implemented by scikit-image with ``gaussian_weights=True,
sigma=1.5, use_sample_covariance=False``: 11-tap Gaussian, K1 = 0.01, K2 = 0.03, mirror
padding, and the filter half-width cropped from the SSIM map before averaging. Tests check both
metrics against scikit-image.
"""

from __future__ import annotations

import numpy as np

_BT601 = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma in [16, 235] from uint8-range RGB (HxWx3), as float64."""
    return 16.0 + img.astype(np.float64) @ _BT601


def shave(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def _gaussian_kernel(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable correlation with mirror ('reflect' in scipy terms) padding, same size output."""
    r = len(k) // 2
    padded = np.pad(img, r, mode="symmetric")
    tmp = sum(k[i] * padded[i:i + img.shape[0], :] for i in range(len(k)))
    return sum(k[i] * tmp[:, i:i + img.shape[1]] for i in range(len(k)))


def ssim_channel(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    k = _gaussian_kernel()
    mu_a, mu_b = _filter(a, k), _filter(b, k)
    var_a = _filter(a * a, k) - mu_a**2
    var_b = _filter(b * b, k) - mu_b**2
    cov = _filter(a * b, k) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    pad = (2 * int(3.5 * 1.5 + 0.5) + 1 - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    if a.ndim == 2:
        return ssim_channel(a, b, data_range)
    return float(np.mean([ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[2])]))


def image_metrics(pred: np.ndarray, target: np.ndarray, border: int = 0) -> dict[str, float]:
    """All four numbers for one uint8 RGB prediction against its target."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    y_p, y_t = shave(rgb_to_y(pred), border), shave(rgb_to_y(target), border)
    return {
        "psnr_rgb": psnr(pred, target),
        "ssim_rgb": ssim(pred, target),
        "psnr_y": psnr(y_p, y_t),
        "ssim_y": ssim(y_p, y_t),
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}
