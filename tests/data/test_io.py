import io

import numpy as np
import pytest
from PIL import Image

from quantir.data.io import load_photo, read_image, write_image
from quantir.errors import ImageError
from tests.conftest import natural_image


def _save(path, im, **kw):
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_reads_common_formats_as_uint8_rgb(tmp_path, fmt, ext):
    img = natural_image(20, 30)
    p = _save(tmp_path / f"a.{ext}", Image.fromarray(img), format=fmt)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    if fmt in ("PNG", "BMP", "TIFF"):
        assert np.array_equal(out, img)


def test_grayscale_palette_and_16bit(tmp_path):
    gray = natural_image(16, 16)[..., 0]
    out = read_image(_save(tmp_path / "g.png", Image.fromarray(gray, "L")))
    assert out.shape == (16, 16, 3) and np.array_equal(out[..., 1], gray)
    pal = Image.fromarray(natural_image(16, 16)).convert("P")
    assert read_image(_save(tmp_path / "p.png", pal)).shape == (16, 16, 3)
    g16 = (gray.astype(np.uint16) * 257)
    photo = load_photo(_save(tmp_path / "g16.png", Image.fromarray(g16)))
    assert photo.bit_depth == 16 and np.array_equal(photo.rgb[..., 0], gray)


def test_rgba_alpha_kept_aside_and_restorable(tmp_path):
    rgba = np.dstack([natural_image(12, 14), np.arange(12 * 14, dtype=np.uint8).reshape(12, 14)])
    photo = load_photo(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA")))
    assert np.array_equal(photo.alpha, rgba[..., 3]) and np.array_equal(photo.rgb, rgba[..., :3])
    write_image(tmp_path / "b.png", photo.rgb, alpha=photo.alpha)
    back = np.asarray(Image.open(tmp_path / "b.png"))
    assert np.array_equal(back, rgba)


def test_cmyk_and_exif_orientation(tmp_path):
    cmyk = Image.fromarray(natural_image(10, 20)).convert("CMYK")
    assert read_image(_save(tmp_path / "c.jpg", cmyk, format="JPEG")).shape == (10, 20, 3)
    im = Image.fromarray(natural_image(10, 20))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "r.jpg").shape == (20, 10, 3)
    sizes = []  # the size handed over before decoding is the oriented one too
    assert load_photo(tmp_path / "r.jpg", on_size=lambda h, w: sizes.append((h, w))).rgb.shape[:2] == (20, 10)
    assert sizes == [(20, 10)]


def test_icc_profile_survives_round_trip(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p = tmp_path / "icc.png"
    Image.fromarray(natural_image(8, 8)).save(p, icc_profile=icc)
    photo = load_photo(p)
    write_image(tmp_path / "out.jpg", photo.rgb, icc_profile=photo.icc_profile)
    assert Image.open(tmp_path / "out.jpg").info.get("icc_profile") == icc


def _truncated(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(natural_image(64, 64)).save(buf, format="JPEG")
    p = tmp_path / "trunc.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return p


def _empty(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path / "empty.png"


def _text(tmp_path):
    (tmp_path / "text.png").write_text("hello, not an image")
    return tmp_path / "text.png"


@pytest.mark.parametrize("make,needle", [
    (lambda t: t / "missing.png", "not found"),
    (_empty, "empty"),
    (_truncated, "truncated"),
    (_text, "not an image"),
])
def test_bad_input_raises_one_line_image_error(tmp_path, make, needle):
    with pytest.raises(ImageError) as err:
        load_photo(make(tmp_path))
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_pixel_limit(tmp_path):
    p = _save(tmp_path / "big.png", Image.fromarray(natural_image(100, 100)))
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_photo(p, max_pixels=5000)


def test_write_is_atomic_and_rejects_unknown_extension(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="unsupported output extension"):
        write_image(tmp_path / "x.xyz", natural_image(4, 4))
    target = tmp_path / "out.png"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(ImageError, match="disk full"):
        write_image(target, natural_image(4, 4))
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left
