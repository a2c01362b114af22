"""``quantir upscale IN... -o OUT`` and ``quantir enhance IN... -o OUT`` with the built-in INT8 models."""

from __future__ import annotations

import sys

import dataclasses

from quantir.cli.args import int_range, pixel_count, tile_size
from quantir.data.io import DEFAULT_MAX_PIXELS
from quantir.data.task import Task
from quantir.infer import EXACT_TILE_SIDE, FIXED_TILE_SIDE, TILE_PIXELS, min_tile


@dataclasses.dataclass(frozen=True)
class Command:
    task: str
    help: str
    scale_option: bool  # SR commands take --scale (checked against the model)


# Tiles default to infer.default_tile: for a model whose tiles meet at an exact cut (the built-in x3
# net) 448 px squares with 2 workers, smaller with more so the tiles' memory stays the same; the
# enhancer's 768 px tiles cross-fade and keep their size. --tile HxW also takes short, wide SR tiles:
# band memory follows the height, the recomputed overlap both sides, and the output bits do not
# change (BENCHMARKS.md "Photo path").
COMMANDS = {"upscale": Command("sr", "x3 super-resolution with the built-in INT8 model (or --model)", True),
            "enhance": Command("enhance", "photo enhancement with the built-in INT8 model (or --model)", False)}


def default_help(task: str) -> str:
    fixed, budget = FIXED_TILE_SIDE[Task(task)], TILE_PIXELS[Task(task)]
    return (f"{EXACT_TILE_SIDE}x{EXACT_TILE_SIDE} with 1-2 threads and smaller with more (at most {budget} "
            f"px together) for a model whose tiles meet exactly, else {fixed}x{fixed} (and at most "
            f"{max(1, budget // fixed ** 2)} tile workers, more threads each)")


def add_parsers(sub) -> None:
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help)
        p.add_argument("inputs", nargs="+", metavar="IN", help="photos and/or folders of photos")
        p.add_argument("-o", "--output", required=True,
                       help="output file (one input) or folder; the extension picks the format")
        if cmd.scale_option:
            p.add_argument("--scale", type=int_range(2, 4), default=3,
                           help="upscaling factor (the built-in model is x3)")
        p.add_argument("--model", help="a .tflite/.onnx artifact (or checkpoint for --backend torch)")
        p.add_argument("--backend", choices=["tflite", "onnx", "torch"], default="tflite")
        lo = min_tile(cmd.task)
        p.add_argument("--tile", type=tile_size(lo, 16384), default=None, metavar="N|HxW",
                       help=f"tile bound in input pixels, N (square) or HxW, each side {lo}..16384 (bounds memory "
                            f"on large photos; default {default_help(cmd.task)})")
        p.add_argument("--ext", default=".png", help="output format for folder outputs (default .png)")
        p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        p.add_argument("--compare", action="store_true", help="also write <name>_compare.png (before | after)")
        p.add_argument("--threads", type=int_range(1, 256), default=2,
                       help="CPU threads: the tiles are shared among this many single-threaded copies of the model "
                            "(at most 8; same output bits for any count; default 2)")
        p.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS,
                       help=f"refuse photos whose input or output is larger (default {DEFAULT_MAX_PIXELS:.0e})")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=run, task=cmd.task)


def run(args) -> int:
    from pathlib import Path

    from quantir.infer import Processor, builtin_model, plan_jobs, run_batch

    scale = getattr(args, "scale", 1)
    model = Path(args.model) if args.model else builtin_model(args.task, args.backend)
    processor = Processor(model, args.task, scale, backend=args.backend, tile=args.tile, threads=args.threads)
    jobs = plan_jobs(args.inputs, args.output, args.ext)
    done, failed = run_batch(jobs, processor, overwrite=args.overwrite, compare=args.compare,
                             max_pixels=args.max_pixels, progress=not args.quiet)
    for path in done:
        print(path)
    if failed:
        print(f"{len(failed)} of {len(jobs)} image(s) failed:", file=sys.stderr)
        for _, msg in failed:
            print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0
