"""What the streaming JPEG writer's strips cost, and whether they could be encoded in parallel.

The photo path encodes its JPEG output strip by strip on the main thread while the tile workers
compute (quantir.data.jpeg_stream). This times the two parts of one strip's encode with Pillow,
``Image.fromarray`` (numpy RGB -> Pillow's 4-byte pixels) and ``save`` (libjpeg-turbo), each
serially and on two threads: a part that runs no faster on two threads holds the GIL, so while it
runs the workers cannot start their next tile either.

    python benchmarks/jpeg_encode.py --photo data/samples/train/lomiri16__Bridge_by_Sander_Klootwijk.jpg

The strips are cut from the photo resized to 12000 px wide (the x3 output of a 12 MP photo), as
the writer cuts them (quantir.data.jpeg_stream.STRIP_ROWS rows, 4:4:4 at quality 95).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from quantir.data.jpeg_stream import STRIP_ROWS, jpeg_params

sys.path.insert(0, str(Path(__file__).parent))  # run as a script from anywhere: the sibling benchmark's helpers
from photo_path import open_photo  # noqa: E402

OUTPUT_MP = 12000 * 9000 / 1e6  # the x3 output of a 12 MP photo, for the CPU estimate
DISTINCT = 3  # different strips cut from the photo; --strips cycles through them


def timed(fn, items, threads: int) -> float:
    t = time.perf_counter()
    if threads == 1:
        for x in items:
            fn(x)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, items))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photo", type=Path, required=True)
    ap.add_argument("--width", type=int, default=12000)
    ap.add_argument("--strips", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quality", type=int, default=95)
    a = ap.parse_args()
    img = np.asarray(open_photo(a.photo).resize((a.width, STRIP_ROWS * DISTINCT), Image.LANCZOS))
    cuts = [np.ascontiguousarray(img[k * STRIP_ROWS:(k + 1) * STRIP_ROWS]) for k in range(DISTINCT)]
    strips = [cuts[k % DISTINCT].copy() for k in range(a.strips)]  # one array per strip, as the writer gets
    params = jpeg_params(a.quality)
    images = [Image.fromarray(x, "RGB") for x in strips]

    def save(im):
        im.save(io.BytesIO(), format="JPEG", **params)

    def convert(x):
        Image.fromarray(x, "RGB")

    parts = {"fromarray": (convert, strips), "save": (save, images)}
    mp = a.strips * STRIP_ROWS * a.width / 1e6
    print(f"{a.strips} strips of {a.width}x{STRIP_ROWS} ({mp:.1f} MP), {params}; medians of {a.repeats}")
    total = 0.0
    for name, (fn, items) in parts.items():
        one = statistics.median(timed(fn, items, 1) for _ in range(a.repeats))
        two = statistics.median(timed(fn, items, 2) for _ in range(a.repeats))
        total += one
        print(f"  {name:9s} {one:.3f} s serial ({one / mp * 1e3:.2f} ms/MP), {two:.3f} s on 2 threads "
              f"(speed-up {one / two:.2f})")
    print(f"  together {total / mp * 1e3:.2f} ms/MP: {total / mp * OUTPUT_MP:.2f} s of CPU for a 12000x9000 output")


if __name__ == "__main__":
    main()
