import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from quantir.data.io import write_image, write_bands
from quantir.data.png_stream import PNGStreamWriter
from tests.conftest import natural_image


def _stream(rows, channels, bands, icc=None, fast=True):
    buf = io.BytesIO()
    png = PNGStreamWriter(buf, rows.shape[1], rows.shape[0], channels, icc, fast=fast)
    start = 0
    for n in bands:
        png.write(rows[start:start + n])
        start += n
    png.close()
    buf.seek(0)
    return Image.open(buf)


@pytest.mark.parametrize("fast", [True, False])  # ISA-L's deflater, and the stdlib zlib without it
@pytest.mark.parametrize("channels,mode", [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_streamed_png_decodes_to_the_same_pixels(channels, mode, fast):
    rng = np.random.default_rng(channels)
    rows = rng.integers(0, 256, (37, 23, channels), dtype=np.uint8)
    rows[5:9] = 255  # runs and wrap-around differences in the Up filter
    im = _stream(rows[..., 0] if channels == 1 else rows, channels, [1, 10, 0, 26], fast=fast)
    assert im.mode == mode
    got = np.asarray(im)
    assert np.array_equal(got, rows[..., 0] if channels == 1 else rows)


def test_icc_profile_is_stored():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = _stream(natural_image(8, 9), 3, [8], icc)
    assert im.info["icc_profile"] == icc


def test_wrong_row_counts_and_shapes_are_refused():
    png = PNGStreamWriter(io.BytesIO(), 4, 3, 3)
    with pytest.raises(ValueError, match="width 4"):
        png.write(np.zeros((1, 5, 3), np.uint8))
    png.write(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="more than 3 rows"):
        png.write(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="needs 3 rows, got 2"):
        png.close()


@pytest.mark.parametrize("ext", [".png", ".jpg"])  # JPEG: 300 rows span two 256-row strips
@pytest.mark.parametrize("gray", [False, True])
def test_write_bands_equals_write_image(tmp_path, gray, ext):
    h = 30 if ext == ".png" else 300
    rgb = natural_image(h, 41)
    alpha = np.linspace(0, 255, h * 41).reshape(h, 41).astype(np.uint8)  # JPEG has none: dropped by both
    write_image(tmp_path / f"whole{ext}", rgb, alpha=alpha, grayscale=gray)
    bands = [(0, rgb[:7]), (7, rgb[7:8]), (8, rgb[8:])]
    write_bands(tmp_path / f"bands{ext}", 41, h, iter(bands), alpha=alpha, grayscale=gray)
    a, b = Image.open(tmp_path / f"whole{ext}"), Image.open(tmp_path / f"bands{ext}")
    assert a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_a_failing_band_source_leaves_no_file(tmp_path, ext):
    def bands():
        yield 0, natural_image(4, 10)
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        write_bands(tmp_path / f"x{ext}", 10, 8, bands())
    assert list(tmp_path.iterdir()) == []
