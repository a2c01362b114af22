"""Tiled vs whole-image output of the built-in models: how many levels apart, where, at what cost.

    python benchmarks/tiling_agreement.py --photos data/samples/eval --tiles 104 256

For each photo, each built-in model runs once on the whole image and once in tiles (the photo path
``quantir upscale/enhance`` takes with ``--tile N``); the table gives the largest difference in
8-bit levels, the 99.9th percentile, the fraction of differing values and the PSNR of the tiled
output against the whole-image one. The SR nets' receptive field is inside the tile overlap, so
they must show 0; the U-Net enhancer sees further than any affordable overlap, so its cross-faded
seams differ by a few levels. ``--overlaps`` weighs that against recomputation: the *12 MP pixels*
column is what a 4000x3000 photo puts through the model at that tile and overlap (1.000 = no
overlap). ``--crop`` and ``--select`` pick big photos and keep the whole-image run in memory
(choose on one slice of the photos, report on another). Torch-free (TFLite runtime only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from quantir.cli.args import tile_size
from quantir.data.datasets import image_files
from quantir.data.io import read_image
from quantir.infer import Processor, builtin_model, min_tile, tile_overlap

MP12 = (3000, 4000)  # the pixel-cost column's photo (height, width)


def pixel_factor(processor: Processor, hw: tuple[int, int] = MP12) -> float:
    """Pixels through the model for an image of ``hw`` in ``processor``'s tiles, over the image's pixels."""
    return processor.model_pixels(*hw) / (hw[0] * hw[1])


def center_crop(img: np.ndarray, crop: tuple[int, int] | None) -> np.ndarray:
    if crop is None:
        return img
    h, w = img.shape[:2]
    ch, cw = min(crop[0], h), min(crop[1], w)
    return np.ascontiguousarray(img[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw])


def agreement(task: str, photos: list[Path], tiles: list[int], overlaps: list[int | None], threads: int,
              crop: tuple[int, int] | None) -> list[dict]:
    scale = 3 if task == "sr" else 1
    whole = Processor(builtin_model(task), task, scale, tile=16384, threads=threads)
    imgs = [center_crop(read_image(p), crop) for p in photos]
    refs = [whole.run(img).astype(np.int16) for img in tqdm(imgs, desc=f"{task} whole", leave=False)]
    del whole
    rows = []
    for tile in tiles:
        for overlap in overlaps:
            if tile < min_tile(task, overlap):
                continue
            tiled = Processor(builtin_model(task), task, scale, tile=tile, threads=threads, overlap=overlap)
            d = np.concatenate([np.abs(tiled.run(img).astype(np.int16) - ref).ravel()
                                for img, ref in zip(tqdm(imgs, desc=f"{task} {tile}/{overlap}", leave=False), refs)])
            mse = float(np.mean(d.astype(np.float64) ** 2))
            rows.append({"model": task, "tile": tile,
                         "overlap": tile_overlap(task, tiled.model.radius, overlap)[0],
                         "photos": len(photos), "max_levels": int(d.max()),
                         "p99_9_levels": float(np.percentile(d, 99.9)), "frac_differing": float(np.mean(d > 0)),
                         "psnr_db": 10 * np.log10(255 ** 2 / mse) if mse else float("inf"),
                         "pixels_12mp": pixel_factor(tiled)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default="data/samples/eval")
    ap.add_argument("--models", nargs="+", choices=["sr", "enhance"], default=["sr", "enhance"])
    ap.add_argument("--tiles", type=int, nargs="+", default=[104, 256])
    ap.add_argument("--overlaps", type=int, nargs="+", default=None,
                    help="overlaps (input px) to try instead of each model's default")
    ap.add_argument("--crop", type=tile_size(1, 1 << 16), default=None, metavar="N|HxW",
                    help="center-crop each photo to at most this size (the whole-image run's memory)")
    ap.add_argument("--min-side", type=int, default=0, help="only photos whose shorter side is at least this")
    ap.add_argument("--select", default=":", metavar="START:STOP",
                    help="a slice of the (sorted, --min-side filtered) photos, e.g. 0:4 to choose, 4: to report")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    photos = [p for p in image_files(a.photos) if min(Image.open(p).size) >= a.min_side]
    start, _, stop = a.select.partition(":")
    photos = photos[int(start) if start else None:int(stop) if stop else None]
    if not photos:
        raise SystemExit(f"no photos in {a.photos} with a shorter side >= {a.min_side} in slice {a.select}")
    rows = []
    for task in a.models:
        rows += agreement(task, photos, a.tiles, a.overlaps or [None], a.threads, a.crop)
    print(f"photos: {', '.join(p.name for p in photos)}")
    print("| model | tile | overlap | photos | max levels | 99.9th pct | values differing | PSNR vs whole | 12 MP pixels |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['tile']} | {r['overlap']} | {r['photos']} | {r['max_levels']} | "
              f"{r['p99_9_levels']:.0f} | {100 * r['frac_differing']:.3f}% | {r['psnr_db']:.2f} dB | "
              f"{r['pixels_12mp']:.3f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
