import numpy as np
import pytest
import torch
import torch.nn as nn

from quantir.data.tiling import tile_starts, tiled_apply
from tests.conftest import natural_image


def _conv_net(scale: int):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
              nn.Conv2d(8, 3 * scale * scale, 3, padding=1)]
    net = nn.Sequential(*layers, nn.PixelShuffle(scale)).eval()  # receptive radius 3 input pixels

    def fn(img):
        with torch.no_grad():
            x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None] / 255.0
            return net(x)[0].permute(1, 2, 0).numpy()

    return fn


@pytest.mark.parametrize("scale", [1, 3])
def test_tiled_equals_untiled_for_a_conv_net(scale):
    img = natural_image(150, 211, seed=2)
    fn = _conv_net(scale)
    full = fn(img)
    calls = []
    tiled = tiled_apply(img, fn, scale=scale, tile=64, overlap=16, margin=5, on_tile=lambda k, n: calls.append(n))
    assert tiled.shape == full.shape and len(calls) > 4
    assert np.abs(tiled - full).max() < 1e-5


def test_uint8_outputs_and_rectangular_tiles():
    img = natural_image(100, 130)
    out = tiled_apply(img, lambda t: t, scale=1, tile=(40, 56), overlap=12)
    assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_tile_starts_cover_and_end_aligned():
    starts = tile_starts(300, 128, 32)
    assert starts[0] == 0 and starts[-1] == 300 - 128 and all(b - a <= 96 for a, b in zip(starts, starts[1:]))
