import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from quantir.data import jpeg_stream
from quantir.data.jpeg_stream import JPEGStreamWriter, jpeg_params
from tests.conftest import natural_image


def _stream(img, bands, quality=95, icc=None):
    h, w = img.shape[:2]
    buf = io.BytesIO()
    jpg = JPEGStreamWriter(buf, w, h, 1 if img.ndim == 2 else 3, quality, icc)
    start = 0
    for n in bands:
        jpg.write(img[start:start + n])
        start += n
    jpg.close()
    return buf.getvalue()


def _whole(img, quality=95):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", **jpeg_params(quality))
    return buf.getvalue()


@pytest.mark.parametrize("h,w,quality,gray", [(300, 211, 95, False), (301, 517, 80, False),  # 4:4:4 and 4:2:0
                                              (77, 1000, 95, True), (520, 37, 85, False)])
def test_strips_decode_to_the_pixels_of_the_whole_image_encode(h, w, quality, gray, monkeypatch):
    monkeypatch.setattr(jpeg_stream, "STRIP_ROWS", 64)  # several strips, restart markers cycling past RST7
    img = natural_image(h, w, seed=h)
    if gray:
        img = img[..., 0]
    data = _stream(img, [5, 100, 1, 10_000], quality)
    assert data.count(b"\xff\xdd") == 1  # one DRI
    got = np.asarray(Image.open(io.BytesIO(data)))
    want = np.asarray(Image.open(io.BytesIO(_whole(img, quality))))
    assert got.shape == img.shape and np.array_equal(got, want)
    assert abs(len(data) - len(_whole(img, quality))) < 4 * (h // 16 + 2) + 16  # only markers added


def test_restart_interval_fits_16_bits_on_wide_images():
    jpg = JPEGStreamWriter(io.BytesIO(), 12000, 9000, 3, 95)
    assert jpg.interval <= 0xFFFF and jpg.strip % 8 == 0 and jpg.strip >= 8


def test_icc_profile_and_row_checks():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = Image.open(io.BytesIO(_stream(natural_image(40, 9), [40], icc=icc)))
    assert im.info["icc_profile"] == icc
    jpg = JPEGStreamWriter(io.BytesIO(), 4, 3, 3)
    with pytest.raises(ValueError, match="width"):
        jpg.write(np.zeros((1, 5, 3), np.uint8))
    jpg.write(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="more than 3 rows"):
        jpg.write(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="needs 3 rows, got 2"):
        jpg.close()
