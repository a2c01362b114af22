"""Tiled vs whole-image output of the built-in models: how many levels apart, where.

    python benchmarks/tiling_agreement.py --photos data/samples/eval --tiles 104 256

For each photo, each built-in model runs once on the whole image and once in tiles (the photo path
``quantir upscale/enhance`` takes with ``--tile N``); the table gives the largest difference in
8-bit levels, the 99.9th percentile and the fraction of differing values. The SR nets' receptive
field is inside the tile overlap, so they must show 0; the U-Net enhancer sees further than its
48-pixel overlap, so its seams differ by a few levels. Torch-free (TFLite runtime only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from quantir.data.datasets import image_files
from quantir.data.io import read_image
from quantir.infer import Processor, builtin_model


def agreement(task: str, photos: list[Path], tiles: list[int], threads: int) -> list[dict]:
    rows = []
    whole = Processor(builtin_model(task), task, 3 if task == "sr" else 1, tile=16384, threads=threads)
    for tile in tiles:
        tiled = Processor(builtin_model(task), task, 3 if task == "sr" else 1, tile=tile, threads=threads)
        diffs = []
        for p in photos:
            img = read_image(p)
            d = np.abs(whole.run(img).astype(np.int16) - tiled.run(img).astype(np.int16))
            diffs.append(d.ravel())
        d = np.concatenate(diffs)
        rows.append({"model": task, "tile": tile, "photos": len(photos), "max_levels": int(d.max()),
                     "p99_9_levels": float(np.percentile(d, 99.9)), "frac_differing": float(np.mean(d > 0))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default="data/samples/eval")
    ap.add_argument("--tiles", type=int, nargs="+", default=[104, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    photos = image_files(a.photos)
    rows = agreement("sr", photos, [t for t in a.tiles if t >= 72], a.threads) + \
        agreement("enhance", photos, [t for t in a.tiles if t >= 104], a.threads)
    print("| model | tile | photos | max levels | 99.9th pct | values differing |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['tile']} | {r['photos']} | {r['max_levels']} | {r['p99_9_levels']:.0f} | "
              f"{100 * r['frac_differing']:.3f}% |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
