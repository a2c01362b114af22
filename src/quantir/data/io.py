"""Photo I/O: anything Pillow reads becomes uint8 RGB HxWx3; writes are atomic.

Deliberately free of torch so the inference-only install can use it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from quantir.data.jpeg_stream import JPEGStreamWriter, jpeg_params
from quantir.data.png_stream import PNGStreamWriter
from quantir.errors import ImageError
from quantir.utils import atomic_path, check_writable

# Decompression-bomb guard on max(input, output) pixels: 250 MP admits a 24 MP photo upscaled x3
# (216 MP out) and refuses a tiny file that decodes to a huge canvas before any memory is spent.
DEFAULT_MAX_PIXELS = 250_000_000
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}
READ_SUFFIXES = tuple(WRITE_FORMATS) + (".gif", ".ppm", ".pgm")

log = logging.getLogger(__name__)

ORIENTATION_TAG = 0x0112  # EXIF orientation: 5-8 turn the photo by 90 degrees (width and height swap)
DECODE_BLOCK = 32 << 20  # bytes of compressed data read per decode call (a 24 MP JPEG: about 10 MB)

# We check the pixel count ourselves (with a one-line error); Pillow's bomb guard would warn instead.
Image.MAX_IMAGE_PIXELS = None


@dataclasses.dataclass
class Photo:
    """A decoded photo: RGB pixels plus what must survive a round trip."""

    rgb: np.ndarray  # uint8, HxWx3
    alpha: np.ndarray | None = None  # uint8, HxW
    icc_profile: bytes | None = None
    source_mode: str = "RGB"
    bit_depth: int = 8

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if arr.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.round(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
    # 32-bit integer images (mode "I") are 16-bit data in Pillow unless they exceed it.
    top = 65535.0 if int(arr.max(initial=0)) > 255 else 255.0
    return np.clip(np.round(arr.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)


def load_photo(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, scale: int = 1,
               on_size: Callable[[int, int], None] | None = None) -> Photo:
    """Decode ``path`` with EXIF orientation applied; raise ImageError with one line on bad input.

    ``max_pixels`` bounds the larger of the input and the output (``scale`` x upscaled), checked
    from the header before anything is decoded. Of an animated or multi-page file only the first
    frame is used, and a warning says so. ``on_size(height, width)``, if given, is called with the
    photo's size (as oriented) once the header has passed those checks, just before the pixels are
    decoded: the photo path lets its models allocate for the photo's tiles meanwhile.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    size = path.stat().st_size
    if size == 0:
        raise ImageError(f"{path}: file is empty")
    try:
        # A file of up to DECODE_BLOCK is read whole first, and decoded from memory in one call: the
        # decode then releases the GIL once, for all of its work, instead of at every file read, where
        # a thread waiting for the GIL (on_size's allocation) would take it and stall the decode.
        source = io.BytesIO(path.read_bytes()) if on_size is not None and size <= DECODE_BLOCK else path
        with Image.open(source) as im:
            w, h = im.size
            if w == 0 or h == 0:
                raise ImageError(f"{path}: image has zero size")
            out_pixels = w * h * scale * scale
            if max(w * h, out_pixels) > max_pixels:
                what = f"{w}x{h}" + (f" x{scale} = {w * scale}x{h * scale}" if scale > 1 else "")
                raise ImageError(f"{path}: {what} = {max(w * h, out_pixels) / 1e6:.1f} MP exceeds the limit of "
                                 f"{max_pixels / 1e6:.1f} MP (raise it with --max-pixels)")
            if getattr(im, "n_frames", 1) > 1:
                log.warning("%s: %d frames; only the first is used", path, im.n_frames)
            icc = im.info.get("icc_profile")
            if on_size is not None:
                turned = im.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
                on_size(*((w, h) if turned else (h, w)))
            im.decodermaxblock = max(im.decodermaxblock, DECODE_BLOCK)  # one decode call, not one per 64 KB
            im.load()
            # in place: the default returns a copy even without an orientation tag (0.1 s and 36 MB on
            # a 12 MP photo, before the first tile can start)
            ImageOps.exif_transpose(im, in_place=True)
            return _decode(im, icc)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image, or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageError(f"{path}: truncated or corrupt image ({reason})") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: {err}") from None


def _decode(im: Image.Image, icc: bytes | None) -> Photo:
    mode = im.mode
    alpha = None
    bit_depth = 16 if mode.startswith("I;16") or mode == "I" else 8
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode_now = im.mode
    else:
        mode_now = mode
    if mode_now in ("RGBA", "LA", "PA", "La", "RGBa"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.uint8).copy()
        im = im.convert("RGB") if mode_now in ("RGBA", "RGBa", "PA") else im.convert("L")
        mode_now = im.mode
    if mode_now == "CMYK":
        im = im.convert("RGB")
        icc = None  # the CMYK profile does not describe the converted RGB pixels
        mode_now = "RGB"
    if mode_now in ("RGB", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)  # convert copies even RGB
    else:  # single channel: L, 1, I, I;16*, F
        gray = _to_uint8(np.asarray(im), mode_now)
        if gray.ndim == 3:
            gray = gray[..., 0]
        rgb = np.repeat(gray[..., None], 3, axis=2)
    return Photo(rgb=np.ascontiguousarray(rgb), alpha=alpha, icc_profile=icc, source_mode=mode, bit_depth=bit_depth)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 RGB HxWx3 of any readable photo."""
    return load_photo(path, max_pixels).rgb


def output_format(path: str | Path) -> str:
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unsupported output extension (use one of {', '.join(sorted(WRITE_FORMATS))})")
    return fmt


def _gray(rgb: np.ndarray) -> np.ndarray:
    """The stored single channel of a grayscale source: the rounded channel mean."""
    return np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8)


def write_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None,
                icc_profile: bytes | None = None, quality: int = 95, grayscale: bool = False) -> None:
    """Write uint8 RGB (+ optional alpha) atomically: a crash never leaves a partial file at ``path``.

    ``grayscale`` stores the channel mean as a single-channel image (for grayscale sources).
    """
    path = Path(path)
    fmt = output_format(path)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"{path}: expected uint8 HxWx3 pixels, got {rgb.dtype} {rgb.shape}")
    if grayscale:
        im = Image.fromarray(_gray(rgb), "L")
    else:
        im = Image.fromarray(rgb, "RGB")
    if alpha is not None and fmt in ("PNG", "WEBP", "TIFF"):
        im.putalpha(Image.fromarray(alpha, "L"))
    params: dict = {}
    if icc_profile and not grayscale:  # an RGB profile does not describe gray pixels
        params["icc_profile"] = icc_profile
    if fmt == "WEBP":
        params["quality"] = quality
    if fmt == "JPEG":
        params.update(jpeg_params(quality))
    check_writable(path)
    try:
        with atomic_path(path) as tmp:
            im.save(tmp, format=fmt, **params)
    except OSError as err:
        raise ImageError(f"{path}: cannot write ({str(err).splitlines()[0]})") from None


STREAMED_FORMATS = ("PNG", "JPEG")  # written band by band (write_bands); the others need the whole image


def write_bands(path: str | Path, width: int, height: int, bands: Iterable[tuple[int, np.ndarray]],
                alpha: np.ndarray | None = None, icc_profile: bytes | None = None,
                grayscale: bool = False, quality: int = 95) -> None:
    """Write a PNG or JPEG from consecutive ``(row, uint8 RGB band)`` pairs as they come, atomically.

    Only a band or two is in memory at a time (``alpha``, if given, is the whole HxW plane; JPEG
    drops it, as :func:`write_image` does). The pixels are those :func:`write_image` would store
    for the stacked bands (for JPEG: the same decoded pixels); ``grayscale`` as there.
    """
    path = Path(path)
    fmt = output_format(path)
    if fmt not in STREAMED_FORMATS:
        raise ValueError(f"{path}: {fmt} is not written band by band")
    check_writable(path)
    alpha = alpha if fmt == "PNG" else None
    channels = (1 if grayscale else 3) + (alpha is not None)
    icc = None if grayscale else icc_profile  # an RGB profile does not describe gray pixels

    def pixels(row: int, band: np.ndarray) -> np.ndarray:
        planes = [_gray(band)[..., None] if grayscale else band]
        if alpha is not None:
            planes.append(alpha[row:row + len(band), :, None])
        return np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0]

    try:
        # One encoder thread: band k is filtered and deflated (PNG) or DCT-coded (JPEG) while the
        # model computes band k + 1 (zlib and Pillow's encoder release the GIL); at most one band
        # waits, so memory stays two bands.
        with atomic_path(path) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(1) as encoder:
            if fmt == "PNG":
                writer = PNGStreamWriter(f, width, height, channels, icc)
            else:
                writer = JPEGStreamWriter(f, width, height, channels, quality, icc)
            pending, expected = None, 0
            for row, band in bands:
                if row != expected:
                    raise ValueError(f"band at row {row}, expected row {expected}")
                expected += len(band)
                if pending is not None:
                    pending.result()
                pending = encoder.submit(writer.write, pixels(row, band))
            if pending is not None:
                pending.result()
            writer.close()
    except OSError as err:
        raise ImageError(f"{path}: cannot write ({str(err).splitlines()[0]})") from None


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (never by directory order).

    Hidden files are skipped: other tools' and our own atomic-write temporaries are not photos.
    """
    folder = Path(folder)
    return sorted((p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in READ_SUFFIXES),
                  key=lambda p: p.name)
