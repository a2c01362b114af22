"""The CPU budget of one ``quantir upscale`` / ``enhance`` run, part by part, against the model alone.

    python benchmarks/photo_path_budget.py --photo data/samples/train/<a 10+ MP photo> --case sr:4000x3000:jpg

On a box whose cores the tile workers already keep busy, the path's wall time is its CPU time
over the cores, so this splits the CPU time, not the wall time. The photo path is replayed with the
CLI's processor (default tiles and workers for ``--threads``), its tiles run in this thread, in one
pass as the path runs them: decode (``load_photo``), one interpreter allocation per worker, every
tile's ``run_into`` split into the interpreter's ``invoke`` and the rest (padding, the input and
output table look-ups, the output's straight into the band), stitching (``tiled_bands``: this
thread's CPU time less its tiles': the strips, the rows carried between bands, handing bands over)
and encoding (``write_bands``' encoder thread: the process's CPU time less this thread's; for an
RGB photo, as the cases' JPEG inputs are, its output file is the CLI's, byte for byte). Then:
*floor* = all of it over ``--threads`` cores, as if perfectly packed; the model's own time for the
photo's pixels as ``photo_path.py`` measures it (``--threads`` threads, no overlap, no I/O); and
with ``--repeats N`` the CLI end to end in fresh processes, for how close the real run comes to its
floor, and the CLI on a strip of two tiles (``startup_s``: imports, model loads, almost no tile
work), which no tile overlaps. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from photo_path import case_arguments, case_input, end_to_end, model_only_seconds  # noqa: E402

from quantir.data import io as data_io  # noqa: E402
from quantir.data.io import load_photo, write_bands  # noqa: E402
from quantir.data.tiling import TileCut, tiled_bands  # noqa: E402
from quantir.evaluate.predictors import load_model  # noqa: E402
from quantir.infer import Processor, builtin_model  # noqa: E402


def run_split(rt, tile: np.ndarray, cut: TileCut | None = None) -> tuple[object, float, float]:
    """(``rt.run(tile)``, or ``rt.run_into(tile, cut)`` as the path's tile workers call it, CPU seconds
    of the interpreter's invoke, CPU seconds of the rest of the call)."""
    spent = [0.0]
    invoke = rt.interpreter.invoke

    def timed():
        c = time.thread_time()
        invoke()
        spent[0] += time.thread_time() - c

    rt.interpreter.invoke = timed
    try:
        c = time.thread_time()
        out = rt.run(tile) if cut is None else rt.run_into(tile, cut)
        total = time.thread_time() - c
    finally:
        del rt.interpreter.invoke  # back to the class's method
    return out, spent[0], total - spent[0]


class NullWriter:
    """A streaming writer that drops the rows (``--no-encode``): the path's other parts without an
    encoder beside them."""

    def __init__(self, *args, **kwargs):
        pass

    def write(self, rows):
        pass

    def close(self):
        pass


def budget(model: Path, task: str, src: Path, out: Path, threads: int) -> dict:
    """CPU seconds of each part of the photo path for ``src`` -> ``out``, its tiles run in this thread."""
    proc = Processor(model, task, 3 if task == "sr" else 1, threads=threads)
    c = time.thread_time()
    photo = load_photo(src, scale=proc.scale)
    decode = time.thread_time() - c
    canvas, plan, tiles = proc.tiling(photo.rgb)
    workers = len(proc._tile_models(tiles))  # the path's rule: one model for a photo of one tile
    rt = load_model(model, threads=1)  # fresh, so that its allocation can be timed
    cpu = {"allocate": 0.0, "invoke": 0.0, "tile_rest": 0.0}
    shape, ran = [], []  # the output tile shape; the input pixels of every tile run

    def record(tile: np.ndarray, cut: TileCut | None = None):
        if not shape:  # every worker allocates once for the tile shape
            c = time.thread_time()
            rt.prepare(*tile.shape[:2])
            cpu["allocate"] = (time.thread_time() - c) * workers
        out, invoke, rest = run_split(rt, tile, cut)
        cpu["invoke"] += invoke
        cpu["tile_rest"] += rest
        shape[:] = [n * proc.scale for n in tile.shape[:2]]
        ran.append(tile.shape[0] * tile.shape[1])
        return out

    h, w = photo.rgb.shape[:2]
    oh, ow = h * proc.scale, w * proc.scale

    def bands():  # Processor.bands with one worker that records its tiles
        for row, band in tiled_bands(canvas, record, into=[record], **plan):
            if row < oh:
                yield row, band[: oh - row, :ow]

    # One pass, as the path runs: each tile's output goes into its band (keeping the tiles for a second
    # pass made every output fresh memory, about 9 ms of page faults a tile), and each band goes to
    # the encoder thread. This thread's CPU time less its tiles' is the stitching (and handing bands
    # over); the process's less this thread's is the encoder's.
    p0, t0 = time.process_time(), time.thread_time()
    write_bands(out, ow, oh, bands(), icc_profile=photo.icc_profile)
    main = time.thread_time() - t0
    encode = time.process_time() - p0 - main
    stitch = main - cpu["invoke"] - cpu["tile_rest"] - cpu["allocate"] / workers
    parts = {"decode": decode, **cpu, "stitch": stitch, "encode": encode}
    return {"tiles": len(ran), "workers": workers, "tile": list(proc.tile), "tile_out": list(shape),
            "tile_px_ratio": sum(ran) / (h * w),
            "cpu_s": parts, "cpu_total_s": sum(parts.values()), "floor_s": sum(parts.values()) / threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    case_arguments(ap)
    ap.set_defaults(case="sr:4000x3000:jpg")
    ap.add_argument("--repeats", type=int, default=0, help="also time the CLI end to end this many times")
    ap.add_argument("--no-encode", action="store_true",
                    help="replay with a writer that drops the rows: is the stitching slower beside the encoder?")
    args = ap.parse_args()
    if args.no_encode:
        data_io.PNGStreamWriter = data_io.JPEGStreamWriter = NullWriter
    with tempfile.TemporaryDirectory() as tmp:
        cmd, task, (w, h), src, out = case_input(args.photo, args.case, Path(tmp))
        model = builtin_model(task)
        row = {"case": args.case, "threads": args.threads, **budget(model, task, src, out, args.threads)}
        pixels = load_photo(src).rgb
        tile = tuple(row["tile"])  # the CLI's default bound for this model and --threads
        model_runs = [model_only_seconds([load_model(model, threads=args.threads)], w * h, min(tile), pixels)]
        # start-up: the CLI on a strip of two tiles (64 px high), in fresh processes: the imports, the
        # model loads and what else a run pays before and after its tiles, with almost no tile work
        small = Path(tmp) / "small.jpg"
        Image.fromarray(pixels[:64, :tile[1] + 64]).save(small, quality=95)
        e2e, startup = [], []
        for _ in range(args.repeats):
            e2e.append(end_to_end(cmd, src, Path(tmp) / f"cli{out.suffix}", tile, args.threads)["e2e_s"])
            model_runs.append(model_only_seconds([load_model(model, threads=args.threads)], w * h, min(tile), pixels))
            startup.append(end_to_end(cmd, small, Path(tmp) / f"small_out{out.suffix}", tile, args.threads)["e2e_s"])
    row["model_s"] = median(model_runs)
    row["floor_ratio"] = row["floor_s"] / row["model_s"]
    row["cpu_share"] = {k: v / row["cpu_total_s"] for k, v in row["cpu_s"].items()}
    if e2e:
        row.update(e2e_runs_s=e2e, e2e_s=median(e2e), ratio=median(e2e) / row["model_s"], startup_s=median(startup),
                   floor_with_startup_ratio=(row["floor_s"] + median(startup)) / row["model_s"])
    rounded = json.loads(json.dumps(row), parse_float=lambda s: round(float(s), 3))
    print(json.dumps(rounded))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
