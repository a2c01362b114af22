import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from quantir.data.metrics import image_metrics, psnr, rgb_to_y, shave, ssim
from tests.conftest import natural_image


def _noisy(img, seed, amp=12):
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(int) + rng.integers(-amp, amp + 1, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scikit_image(seed):
    a = natural_image(70, 90, seed)
    b = _noisy(a, seed)
    m = image_metrics(b, a, border=3)
    assert abs(m["psnr_rgb"] - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-3
    kw = dict(data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(m["ssim_rgb"] - structural_similarity(a, b, channel_axis=2, **kw)) < 1e-4
    ya, yb = shave(rgb_to_y(a), 3), shave(rgb_to_y(b), 3)
    assert abs(m["psnr_y"] - peak_signal_noise_ratio(ya, yb, data_range=255)) < 1e-3
    assert abs(m["ssim_y"] - structural_similarity(ya, yb, **kw)) < 1e-4


def test_bt601_luma_and_identity():
    white = np.full((2, 2, 3), 255, np.uint8)
    assert abs(rgb_to_y(white)[0, 0] - 235.0) < 1e-9
    img = natural_image(20, 20)
    assert psnr(img, img) == float("inf") and abs(ssim(img, img) - 1.0) < 1e-12
