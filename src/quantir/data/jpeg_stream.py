"""A streaming baseline-JPEG writer: rows go to the file as they are produced, with Pillow's encoder.

Pillow's JPEG encoder needs the whole image, so a 12000x9000 output had to be held (0.88 GB) and
encoded on one core after the model had finished. A JPEG can be written in strips instead: each
strip of whole MCU rows is encoded by Pillow as a JPEG of its own, and its entropy-coded scan is
appended to one file, separated by restart markers (RSTn), announced by a DRI marker whose
interval is the MCUs of one strip. A restart resets the DC predictors, just as a fresh JPEG
starts with them at zero, and the quantization and Huffman tables are the same in every strip
(same quality and subsampling; Pillow's standard Huffman tables, no ``optimize``), so the file
holds the very DCT coefficients of the whole-image encode and decodes to the same pixels (tested).
Chroma subsampling reads 2x2 blocks inside an MCU, so strips of whole MCU rows see the same
pixels; only the image's last strip is padded at the bottom, as the whole image is.
Torch-free: Pillow + numpy.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import numpy as np
from PIL import Image

MAX_RESTART_INTERVAL = 0xFFFF  # DRI stores the interval (in MCUs) in 16 bits
STRIP_ROWS = 256  # target strip height in pixels (rounded down to whole MCU rows)


def jpeg_params(quality: int) -> dict:
    """Pillow's save options for quantir's JPEG outputs (4:4:4 at high quality, 4:2:0 below 90)."""
    return {"quality": quality, "subsampling": 0 if quality >= 90 else 2}


def _segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(marker, whole segment bytes) up to and including SOS, and the entropy-coded scan after it."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    pos, segments = 2, []
    while True:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segments.append((marker, data[pos:pos + 2 + length]))
        pos += 2 + length
        if marker == 0xDA:  # SOS: the scan follows, up to EOI
            if data[-2:] != b"\xff\xd9":
                raise ValueError("JPEG stream does not end with EOI")
            return segments, data[pos:-2]


class JPEGStreamWriter:
    """Write a baseline JPEG of known size band by band to an open binary file.

    ``write(rows)`` takes uint8 rows (n, width, 3) or (n, width) for gray, in any band heights;
    rows are buffered into strips of whole MCU rows. ``close()`` checks the row count and ends the file.
    """

    def __init__(self, file: BinaryIO, width: int, height: int, channels: int = 3, quality: int = 95,
                 icc_profile: bytes | None = None):
        if channels not in (1, 3):
            raise ValueError(f"JPEG holds 1 or 3 channels, got {channels}")
        self.file, self.width, self.height, self.channels = file, width, height, channels
        self.params = jpeg_params(quality)
        mcu_w, mcu_h = (8, 8) if channels == 1 or self.params["subsampling"] == 0 else (16, 16)
        per_row = -(-width // mcu_w)
        mcu_rows = max(1, min(STRIP_ROWS // mcu_h, MAX_RESTART_INTERVAL // per_row))
        if per_row > MAX_RESTART_INTERVAL:
            raise ValueError(f"width {width} needs more than {MAX_RESTART_INTERVAL} MCUs per row")
        self.strip = mcu_rows * mcu_h
        self.interval = mcu_rows * per_row
        self.icc_profile = icc_profile
        self.rows_done = 0
        self._buf = np.empty((self.strip, width) + ((channels,) if channels > 1 else ()), np.uint8)
        self._filled = 0
        self._strips = 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim == 3 and self.channels == 1 and rows.shape[2] == 1:
            rows = rows[..., 0]
        if rows.dtype != np.uint8 or rows.shape[1:] != self._buf.shape[1:]:
            raise ValueError(f"expected uint8 rows of width {self.width} x {self.channels}, "
                             f"got {rows.dtype} {rows.shape}")
        if self.rows_done + len(rows) > self.height:
            raise ValueError(f"more than {self.height} rows written")
        self.rows_done += len(rows)
        k = 0
        while k < len(rows):
            if self._filled == 0 and len(rows) - k >= self.strip:
                self._flush(rows[k:k + self.strip])  # a whole strip: encoded from the band itself, no copy
                k += self.strip
                continue
            n = min(len(rows) - k, self.strip - self._filled)
            self._buf[self._filled:self._filled + n] = rows[k:k + n]
            self._filled += n
            k += n
            if self._filled == self.strip:
                self._flush(self._buf)

    def _flush(self, pixels: np.ndarray) -> None:
        mode = "L" if self.channels == 1 else "RGB"
        out = io.BytesIO()
        extra = {"icc_profile": self.icc_profile} if self.icc_profile and self._strips == 0 else {}
        Image.fromarray(pixels, mode).save(out, format="JPEG", **self.params, **extra)
        segments, scan = _segments(out.getvalue())
        if self._strips == 0:
            header = [b"\xff\xd8"]
            for marker, seg in segments:
                if marker == 0xC0:  # SOF0: the whole image's height
                    seg = seg[:5] + struct.pack(">H", self.height) + seg[7:]
                elif (marker & 0xF0) == 0xC0 and marker not in (0xC4, 0xC8, 0xCC):
                    raise ValueError(f"Pillow wrote a non-baseline JPEG (SOF 0x{marker:02x})")
                if marker == 0xDA:
                    header.append(b"\xff\xdd" + struct.pack(">HH", 4, self.interval))  # DRI before the scan
                header.append(seg)
            self.file.write(b"".join(header))
        else:
            self.file.write(bytes((0xFF, 0xD0 + (self._strips - 1) % 8)))  # RSTn between strips
        self.file.write(scan)
        self._strips += 1
        self._filled = 0

    def close(self) -> None:
        if self.rows_done != self.height:
            raise ValueError(f"JPEG needs {self.height} rows, got {self.rows_done}")
        if self._filled:
            self._flush(self._buf[:self._filled])
        self.file.write(b"\xff\xd9")
