"""Where the time of ``quantir upscale`` / ``enhance`` goes on big photos, against the model alone.

    python benchmarks/photo_path.py --photo data/samples/train/<a 10+ MP photo> --json runs/photo_path.json

The photo is resized (Pillow LANCZOS) to each requested input size and saved as JPEG. For every
case, in this one run: (1) the model's own time for those pixels: ``invoke`` of the artifact with
``--threads`` threads on pre-quantized tiles cut from the photo (the median of five), times
(photo pixels / tile pixels), no overlap, no I/O; also the same for the photo path's tile workers
(single-threaded copies invoking side by side, ``workers_s``); (2) the photo path split into
decode, inference (every tile's ``run``, overlap included, summed over workers / workers),
stitching and encode wait; (3) ``quantir upscale`` / ``enhance`` end to end in a fresh process:
wall time and peak RSS (its VmHWM); with ``--floor`` once more with a writer that drops the rows.
(3) runs ``--repeats`` times, each followed by (1) again, and (1) also runs once before; the ratio
of the medians, end-to-end / model, is what the photo path costs on top of the model (single runs
on a shared 2-core box move by 10 %), and ``ratio_best`` the same for the fastest run of each (the
strict one where the model's time has a slow mode). Torch-free (TFLite runtime only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from statistics import median
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from quantir.data.io import STREAMED_FORMATS, output_format, read_image, write_bands, write_image
from quantir.data.png_stream import PNGStreamWriter
from quantir.data.tiling import stack_bands
from quantir.errors import ImageError
from quantir.cli.args import tile_size
from quantir.evaluate.predictors import load_model
from quantir.infer import Processor, builtin_model, tile_overlap

# Peak RSS from inside the child (utils.peak_rss_kb: ru_maxrss would carry over this large parent's peak)
RUN_CLI = """
import sys, time
import quantir.data.io
from quantir.cli import main
from quantir.utils import peak_rss_kb
class NullWriter:  # --floor: a writer that drops the rows, to see what the path costs without encoding
    def __init__(self, *args, **kwargs): pass
    def write(self, rows): pass
    def close(self): pass
args = sys.argv[1:]
if args[0] == "--null-writer":
    args = args[1:]
    quantir.data.io.PNGStreamWriter = quantir.data.io.JPEGStreamWriter = NullWriter
t = time.perf_counter()
code = main(args)
print(time.perf_counter() - t, peak_rss_kb(), code)
"""


def case_arguments(ap: argparse.ArgumentParser) -> None:
    """--photo, --case, --threads and --json, as the single-case photo-path benchmarks take them."""
    ap.add_argument("--photo", type=Path, required=True, help="a large photo to resize to the case's size")
    ap.add_argument("--case", default="enhance:4000x3000:jpg", help="task:WxH:ext as in photo_path.py --cases")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)


def open_photo(photo: Path) -> Image.Image:
    """The photo as RGB, read as the CLI reads it; its one-line error and exit 1 on bad input."""
    try:
        return Image.fromarray(read_image(photo))
    except ImageError as e:
        raise SystemExit(str(e)) from None


def case_input(photo: Path, case: str, folder: Path) -> tuple[str, str, tuple[int, int], Path, Path]:
    """(command, task, (w, h), input file, output file) of a ``task:WxH:ext`` case: the photo
    LANCZOS-resized to WxH and saved in ``folder`` as JPEG q95, as the benchmarks' inputs are made."""
    task, size, ext = case.split(":")
    w, h = (int(v) for v in size.split("x"))
    src = folder / f"in_{w}x{h}.jpg"
    open_photo(photo).resize((w, h), Image.LANCZOS).save(src, quality=95)
    return ("upscale" if task == "sr" else "enhance"), task, (w, h), src, folder / f"out.{ext}"


def model_only_seconds(rts: list, pixels: int, tile: int | tuple[int, int], photo: np.ndarray | None = None,
                       repeats: int = 5) -> float:
    """The artifact's invoke on tile-sized inputs (a side or (height, width)), scaled to ``pixels`` input pixels.

    Tiles are cut from ``photo`` (real content, a different one per repeat; a flat grey tile
    without a photo); the median over repeats, since a shared 2-core box moves single timings by
    10-15 %. With several runtimes (``rts``), each invokes the same tiles at once on its own thread
    (the photo path's tile workers) and a repeat's time is shared by their tiles.
    """
    if len(rts) > 1:  # every runtime allocates, then all start together; the slowest one's total is the wall time
        start = threading.Barrier(len(rts))
        with ThreadPoolExecutor(len(rts)) as pool:
            totals = [sum(t) for t in pool.map(lambda rt: model_only_times(rt, tile, photo, repeats, start), rts)]
        return max(totals) * pixels / (len(rts) * repeats * tile_pixels(tile, photo))
    return float(np.median(model_only_times(rts[0], tile, photo, repeats))) * pixels / tile_pixels(tile, photo)


def tile_pixels(tile: int | tuple[int, int], photo: np.ndarray | None) -> int:
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    return min(th, photo.shape[0]) * min(tw, photo.shape[1]) if photo is not None else th * tw


def model_only_times(rt, tile: int | tuple[int, int], photo: np.ndarray | None, repeats: int,
                     start: threading.Barrier | None = None) -> list[float]:
    """Seconds of each of ``repeats`` invokes (after one to allocate, and ``start`` if given)."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    if photo is None:
        tiles = [np.full((th, tw, 3), 128, np.uint8)] * repeats
    else:
        h, w = photo.shape[:2]
        th, tw = min(th, h), min(tw, w)
        tiles = [photo[(k * 97) % (h - th + 1):][:th, (k * 131) % (w - tw + 1):][:, :tw]
                 for k in range(repeats)]
    xs = [rt.quantize(np.ascontiguousarray(t)[None]) for t in tiles]
    rt.invoke(xs[0])  # allocate once
    if start is not None:
        start.wait()
    times = []
    for x in xs:
        t = time.perf_counter()
        rt.invoke(x)
        times.append(time.perf_counter() - t)
    return times


def split(proc: Processor, path: Path, out: Path) -> dict:
    """Decode / inference / stitching / encode of one photo, the way Processor.process runs it
    (*decode* includes what the first worker's allocation holds it up).

    With several tile workers, *inference* is the tiles' summed ``run`` time divided by the number
    of workers (the wall time they would take if they never waited for each other or a core), and
    *stitching* is the rest of the time spent pulling bands from the tiler.
    """
    t0 = time.perf_counter()
    photo = proc.load(path)  # the first worker allocates for the tiles beside the decode, as in process()
    decode = time.perf_counter() - t0
    infer = [0.0]
    lock = threading.Lock()
    runs = [rt.run for rt in proc.workers]

    def timed(run):
        def call(tile_img):
            t = time.perf_counter()
            y = run(tile_img)
            with lock:
                infer[0] += time.perf_counter() - t
            return y
        return call

    for rt, run in zip(proc.workers, runs):
        rt.run = timed(run)
    h, w = photo.rgb.shape[:2]
    oh, ow = h * proc.scale, w * proc.scale
    produce = [0.0]

    def bands():
        it = proc.bands(photo.rgb)
        while True:
            t = time.perf_counter()
            item = next(it, None)
            produce[0] += time.perf_counter() - t
            if item is None:
                return
            yield item

    t1 = time.perf_counter()
    if output_format(out) in STREAMED_FORMATS:
        write_bands(out, ow, oh, bands(), icc_profile=photo.icc_profile)
    else:
        held = stack_bands(bands(), oh)  # WEBP/TIFF: Pillow encodes the whole image at once
        write_image(out, held, icc_profile=photo.icc_profile)
    total = time.perf_counter() - t1
    for rt, run in zip(proc.workers, runs):
        rt.run = run
    inference = infer[0] / len(proc.workers)
    return {"decode_s": decode, "inference_s": inference, "stitch_s": produce[0] - inference,
            "encode_s": total - produce[0], "path_s": decode + total, "out_mb": out.stat().st_size / 1e6}


def writer_seconds(out: np.ndarray, path: Path, fast: bool, prefix: str, band: int = 768) -> dict:
    """The streaming PNG writer alone on ``out``, in bands of ``band`` rows, one thread."""
    t = time.perf_counter()
    with open(path, "wb") as f:
        png = PNGStreamWriter(f, out.shape[1], out.shape[0], out.shape[2], fast=fast)
        for k in range(0, len(out), band):
            png.write(out[k:k + band])
        png.close()
    return {f"{prefix}_writer_s": time.perf_counter() - t, f"{prefix}_mb": path.stat().st_size / 1e6}


def end_to_end(cmd: str, src: Path, out: Path, tile: tuple[int, int], threads: int, null_writer: bool = False,
               prefix: str = "") -> dict:
    """``quantir CMD`` in a fresh process: wall time and peak RSS; ``null_writer``: the streamed
    output's encoder replaced by one that drops the rows (what the path costs without encoding)."""
    res = subprocess.run([sys.executable, "-c", RUN_CLI] + (["--null-writer"] if null_writer else [])
                         + [cmd, str(src), "-o", str(out), "--overwrite", "--quiet",
                            "--tile", f"{tile[0]}x{tile[1]}", "--threads", str(threads)], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{cmd} failed: {res.stderr.strip().splitlines()[-1]}")
    wall, rss_kb, _ = res.stdout.split()[-3:]
    return {f"{prefix}e2e_s": float(wall), f"{prefix}peak_rss_gb": int(rss_kb) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, required=True, help="a large photo to resize to each case")
    ap.add_argument("--cases", nargs="*", default=["sr:1600x1200:png", "sr:4000x3000:png", "sr:4000x3000:jpg",
                                                    "sr:6000x4000:png", "enhance:4000x3000:png",
                                                    "enhance:4000x3000:jpg"],
                    help="task:WxH:ext (none: only the --sweep)")
    ap.add_argument("--tile", type=tile_size(8, 16384), default=None,
                    help="tile bound N or HxW (default: the CLI's per task)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pillow", action="store_true",
                    help="also time Pillow's PNG encoder (level 6) and quantir's streaming writer with ISA-L's "
                         "and the stdlib's deflater on the same output, for PNG cases")
    ap.add_argument("--sweep", type=tile_size(8, 16384), nargs="*", default=[],
                    help="also print the model's invoke time per input pixel at these tile sizes (N or HxW), and "
                         "its first invoke (arena allocation and page faults), each size on a freshly loaded model")
    ap.add_argument("--sweep-task", choices=["sr", "enhance"], default="sr", help="the built-in model --sweep times")
    ap.add_argument("--floor", action="store_true",
                    help="also run the command end to end with a writer that drops the rows (no encoding)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="end-to-end runs per case, each followed by the model's time; medians are compared")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    rows = []
    if args.sweep:
        for th, tw in args.sweep:
            rt = load_model(builtin_model(args.sweep_task), threads=args.threads)  # fresh: a true first invoke
            overlap = tile_overlap(args.sweep_task, rt.radius)[0]  # what the photo path recomputes
            x = rt.quantize(np.full((1, th, tw, 3), 128, np.uint8))
            t = time.perf_counter()
            rt.invoke(x)
            first = time.perf_counter() - t
            per_px = model_only_seconds([rt], 1, (th, tw), repeats=5)
            print(json.dumps({"task": args.sweep_task, "tile": f"{th}x{tw}", "threads": args.threads,
                              "first_invoke_s": round(first, 3), "invoke_s": round(per_px * th * tw, 3),
                              "ns_per_px": round(per_px * 1e9, 1), "overlap_px": overlap,
                              "with_overlap": round(per_px * 1e9 * th * tw / ((th - overlap) * (tw - overlap)), 1)}),
                  flush=True)
    base = open_photo(args.photo)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case in args.cases:
            task, size, ext = case.split(":")
            w, h = (int(v) for v in size.split("x"))
            cmd = "upscale" if task == "sr" else "enhance"
            src = tmp / f"in_{w}x{h}.jpg"
            if not src.exists():
                base.resize((w, h), Image.LANCZOS).save(src, quality=95)
            proc = Processor(builtin_model(task), task, 3 if task == "sr" else 1, tile=args.tile, threads=args.threads)
            tile = proc.tile  # --tile, or the CLI's default for this model and thread count
            # the model's own time: one runtime on all the threads, as `quantir bench` runs it; and the
            # throughput of the photo path's tile workers (single-threaded copies) running side by side
            rts = {"model": [load_model(builtin_model(task), threads=args.threads)], "workers": proc.workers}
            pixels = np.asarray(Image.open(src).convert("RGB"))
            # the reference is square tiles of the bound's shorter side: the same reference for every tile
            # shape (the time per pixel is flat across shapes, --sweep), so rows of different shapes compare
            ref = min(tile)
            before = {k: model_only_seconds(v, w * h, ref, pixels) for k, v in rts.items()}
            row = {"case": f"{cmd} {w}x{h} JPEG -> {ext.upper()}", "tile": f"{tile[0]}x{tile[1]}",
                   "workers": len(proc.workers)}
            row.update(split(proc, src, tmp / f"split.{ext}"))
            if args.pillow and ext == "png":
                out = np.asarray(Image.open(tmp / "split.png"))
                t = time.perf_counter()
                Image.fromarray(out).save(tmp / "pillow.png")
                row.update(pillow_encode_s=time.perf_counter() - t, pillow_mb=(tmp / "pillow.png").stat().st_size / 1e6)
                for fast in (True, False):  # quantir's writer with ISA-L's deflater, then the stdlib's
                    row.update(writer_seconds(out, tmp / "writer.png", fast, prefix="isal" if fast else "stdlib"))
                del out
            # End to end (and without encoding) --repeats times, each followed by the model's time again:
            # the medians are compared, since single runs on a shared 2-core box move by 10 %.
            e2e, floor, models = [], [], [before]
            for _ in range(args.repeats):
                e2e.append(end_to_end(cmd, src, tmp / f"out.{ext}", tile, args.threads))
                if args.floor:
                    floor.append(end_to_end(cmd, src, tmp / f"out.{ext}", tile, args.threads, null_writer=True,
                                            prefix="no_encode_"))
                models.append({k: model_only_seconds(v, w * h, ref, pixels) for k, v in rts.items()})
            row.update(model_s=median(m["model"] for m in models), workers_s=median(m["workers"] for m in models),
                       model_runs_s=[m["model"] for m in models], e2e_s=median(r["e2e_s"] for r in e2e),
                       e2e_runs_s=[r["e2e_s"] for r in e2e], peak_rss_gb=max(r["peak_rss_gb"] for r in e2e))
            row["ratio"] = row["e2e_s"] / row["model_s"]
            # the fastest runs of each: the model's time has two modes on some boxes (13 % apart), and a
            # median taken in its slow mode flatters the ratio; this one does not
            row["ratio_best"] = min(row["e2e_runs_s"]) / min(row["model_runs_s"])
            row["ratio_to_workers"] = row["e2e_s"] / row["workers_s"]
            if args.floor:
                row.update(no_encode_e2e_s=median(r["no_encode_e2e_s"] for r in floor),
                           no_encode_peak_rss_gb=max(r["no_encode_peak_rss_gb"] for r in floor))
                row["no_encode_ratio"] = row["no_encode_e2e_s"] / row["model_s"]
            del pixels
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
