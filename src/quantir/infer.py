"""Apply a built-in (or given) INT8 model to photo files: what ``quantir upscale`` / ``enhance`` call.

Torch-free with the TFLite and ONNX backends. Large photos run in tiles; PNG outputs are
written band by band as the tiles finish (memory bounded by a row of tiles, not by the output).
Alpha is carried over (resized for SR), ICC profiles are kept, EXIF orientation is applied,
grayscale stays grayscale, 16-bit input becomes 8-bit output.
"""

from __future__ import annotations

import dataclasses
import math
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from quantir.data.io import (DEFAULT_MAX_PIXELS, READ_SUFFIXES, STREAMED_FORMATS, WRITE_FORMATS, Photo, list_images,
                             load_photo, output_format, write_bands, write_image)
from quantir.data.tiling import exact_overlap, stack_bands, tile_plan, tiled_bands, tiles_meet_exactly
from quantir.data.task import Task
from quantir.errors import ConfigError, ImageError, ModelFileError, OutputError, QuantirError
from quantir.evaluate.predictors import TorchPredictor, load_model
from quantir.export.runtime import Runtime
from quantir.utils import check_writable, remove_stale_temps

ASSETS = Path(__file__).with_name("assets")
# Default tile overlap in input pixels, for models whose receptive field cannot be read from the
# graph (ONNX files, TFLite graphs with ops the reader does not follow: see tile_overlap), and the
# cross-fade of the U-Net (radius 88 by its graph, too wide for exact tiles). The U-Net's 32 px with
# its 768-px tiles (FIXED_TILE_SIDE) put 1.10x a 12 MP photo's pixels through the model where 48 px
# at 512 put 1.21x, and the tiled output is closer to the whole-image run, not further: fewer seams
# (BENCHMARKS.md "Tiled vs whole-image photo path", `benchmarks/tiling_agreement.py --overlaps`).
OVERLAP = {Task.SR: 32, Task.ENHANCE: 32}
# Where the field is unknown, SR tiles meet at a hard cut in the middle of the overlap (SR nets see a
# few px: exact for radius <= overlap / 2, every pixel copied from one tile, no float blending);
# enhancer tiles cross-fade.
CUT_IN_THE_MIDDLE = {Task.SR: True, Task.ENHANCE: False}


def base_overlap(task: str, overlap: int | None = None) -> int:
    """``overlap`` where one is given (a benchmark's), else the task's OVERLAP."""
    return OVERLAP[Task(task)] if overlap is None else overlap


def tile_overlap(task: str, radius: int | None, overlap: int | None = None) -> tuple[int, int | None]:
    """(overlap, margin) of the photo path's tiles for a model of this receptive-field radius.

    Exact (``tiling.exact_overlap``) where 2 x radius fits the default overlap (``overlap`` if given,
    else OVERLAP): the built-in x3 net, radius 10, gets 20 px instead of 32, 10 % fewer pixels through
    the model on a 12 MP photo. A wider field keeps the default overlap (the U-Net cross-fades: 176 px
    of overlap would double its compute); a known-wide SR field cross-fades too, as a hard cut would be
    known to be inexact.
    """
    overlap = base_overlap(task, overlap)
    margin = overlap // 2 if CUT_IN_THE_MIDDLE[Task(task)] and radius is None else None
    return exact_overlap(radius, overlap, margin)


def min_tile(task: str, overlap: int | None = None) -> int:
    """The smallest tile side that leaves a core between the two overlaps (default: OVERLAP's)."""
    return 2 * base_overlap(task, overlap) + 8


# Default tile bounds (input px, a square side), and the memory budget of the tiles: all workers'
# tiles together hold at most TILE_PIXELS[task] pixels, whatever --threads (the interpreter's buffers
# grow with the tile: XNNPACK keeps about 1 KB per tile pixel per worker for the x3 net, so about
# 0.4 GB; about 0.3 KB for the U-Net). Where tiles meet at an exact hard cut (a model whose receptive
# field the graph gives, tile_overlap) the tile size cannot change the output bits, so the tiles
# shrink to fit the budget, with sides of at most EXACT_TILE_SIDE. Larger tiles recompute less of
# the overlap: 1.09x a 12 MP photo's pixels at 448 px against 1.17x at 256, 5 % faster end to end on
# 2 cores (BENCHMARKS.md "Photo path"). Where tiles cross-fade (the U-Net) or the field is unknown
# (ONNX files: a hard cut not known to be exact) the tile size can move the output, so the bound is
# fixed (FIXED_TILE_SIDE) and --threads never changes the output: there the workers become fewer
# instead, each with more threads (fixed_tile_workers; the enhancer at --threads 8 held 1.61 GB
# in eight 768-px workers).
EXACT_TILE_SIDE = 448
FIXED_TILE_SIDE = {Task.SR: 256, Task.ENHANCE: 768}
TILE_PIXELS = {Task.SR: 2 * EXACT_TILE_SIDE ** 2, Task.ENHANCE: 2 * FIXED_TILE_SIDE[Task.ENHANCE] ** 2}


def default_tile(task: str, exact: bool, workers: int) -> tuple[int, int]:
    """The tile bound a photo path uses when none is given (see TILE_PIXELS)."""
    if not exact:
        side = FIXED_TILE_SIDE[Task(task)]
    else:
        side = max(min(EXACT_TILE_SIDE, math.isqrt(TILE_PIXELS[Task(task)] // workers)), min_tile(task))
    return side, side


def fixed_tile_workers(task: str, tile: tuple[int, int], workers: int) -> int:
    """How many of ``workers`` may hold a tile of this size within TILE_PIXELS (at least one)."""
    return max(1, min(workers, TILE_PIXELS[Task(task)] // (tile[0] * tile[1])))


BUILTIN = {"sr": "sr_x3", "enhance": "enhance"}
BACKEND_FILES = {"tflite": "model_int8.tflite", "onnx": "model_int8.onnx", "torch": "qat_final.safetensors"}


def builtin_model(task: str, backend: str = "tflite") -> Path:
    path = ASSETS / BUILTIN[task] / BACKEND_FILES[backend]
    if not path.is_file():
        raise ModelFileError(f"no built-in {task} model for backend {backend!r} at {path}; pass --model PATH")
    return path


@dataclasses.dataclass
class Job:
    source: Path
    target: Path


def _unique_names(files: list[Path], suffix: str) -> list[str]:
    """One output name per input, never shared: ``stem.ext``, or ``stem_<input ext>.ext`` when several
    inputs share a stem, then a counter if even that is taken (a.jpg, a.png, a_2.png -> a_jpg, a_png, a_2)."""
    stems = [f.stem for f in files]
    wanted = [f"{f.stem}_{f.suffix.lstrip('.').lower()}" if stems.count(f.stem) > 1 else f.stem for f in files]
    taken: set[str] = set()
    names = []
    for name in wanted:
        cand, k = name, 2
        while cand.lower() in taken or f"{cand}_compare".lower() in taken:
            cand, k = f"{name}_{k}", k + 1
        taken.update({cand.lower(), f"{cand}_compare".lower()})  # case-insensitive file systems too
        names.append(f"{cand}{suffix}")
    return names


def plan_jobs(inputs: list[str], output: str, ext: str | None = None) -> list[Job]:
    """Map input files/folders to output paths; several inputs (or a folder) need a folder output.

    Every input gets its own output path, and no output may be one of the inputs.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ImageError(f"{p}: no photos in this folder (looked for {', '.join(READ_SUFFIXES)})")
            files += found
        else:
            files.append(p)  # missing files are reported per job
    out = Path(output)
    several = len(files) != 1 or any(Path(i).is_dir() for i in inputs)
    if several and out.suffix.lower() in WRITE_FORMATS and not out.is_dir():
        raise ImageError(f"{out}: {len(files)} inputs need an output folder, not a file name")
    if not several and not out.is_dir() and out.suffix:
        output_format(out)  # unknown extension: fail before any work
        jobs = [Job(files[0], out)]
    else:
        suffix = ext or ".png"
        if not suffix.startswith("."):
            suffix = "." + suffix
        output_format(Path("x" + suffix))
        jobs = [Job(f, out / name) for f, name in zip(files, _unique_names(files, suffix))]
    sources = {f.resolve() for f in files if f.exists()}
    for job in jobs:
        if job.target.resolve() in sources:
            raise ImageError(f"{job.target}: is an input; writing it would destroy the original (choose another -o)")
    return jobs


def _resize_alpha(alpha: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if alpha.shape == shape:
        return alpha
    return np.asarray(Image.fromarray(alpha, "L").resize((shape[1], shape[0]), Image.BICUBIC))


def compare_image(before: np.ndarray, after: np.ndarray, max_width: int = 4096) -> np.ndarray:
    """Side by side: the input resized (nearest) to the output size, then the output; capped in width."""
    h, w = after.shape[:2]
    left = np.asarray(Image.fromarray(before).resize((w, h), Image.NEAREST)) if before.shape != after.shape else before
    canvas = np.concatenate([left, np.full((h, max(4, w // 200), 3), 255, np.uint8), after], axis=1)
    if canvas.shape[1] > max_width:
        nh = int(round(h * max_width / canvas.shape[1]))
        canvas = np.asarray(Image.fromarray(canvas).resize((max_width, max(1, nh)), Image.LANCZOS))
    return canvas


MAX_WORKERS = 8  # tile workers at most: each holds an interpreter and its buffers (memory grows with them)


def worker_split(threads: int, backend: str, max_workers: int = MAX_WORKERS) -> list[int]:
    """The threads of each tile worker for ``threads`` CPU threads: single-threaded interpreters on
    different tiles (``tiling.map_ordered``: no barrier between a tile's ops, so a core lent to the
    encoder costs only its own time) up to ``max_workers``, then the threads shared out among them
    (8 over 3 workers: 3, 3, 2); the torch backend keeps one predictor with all the threads."""
    if backend == "torch" or threads <= 1:
        return [max(1, threads)]
    workers = min(threads, max_workers)
    return [threads // workers + (k < threads % workers) for k in range(workers)]


class Processor:
    """Runs one model over photos; ``tile`` bounds the tiles in input pixels: a side, or (height, width).

    ``threads`` CPU threads run as :func:`worker_split` says: the tiles of a photo are shared out
    among that many copies of the model, and the output is the same bits as with one. ``overlap``
    replaces the task's default overlap (OVERLAP: the cross-fade of wide-field models, the bound of
    exact ones), for benchmarks that weigh seams against recomputation.
    """

    def __init__(self, model_path: Path, task: str, scale: int, backend: str = "tflite",
                 tile: int | tuple[int, int] | None = None, threads: int = 2, overlap: int | None = None):
        if overlap is not None and overlap < 0:
            raise ConfigError(f"overlap {overlap} must be >= 0")
        if tile is not None:
            th, tw = (tile, tile) if isinstance(tile, int) else tile
            lo = min_tile(task, overlap)
            if min(th, tw) < lo:
                raise ConfigError(f"tile {th}x{tw} is too small: use at least {lo} input pixels a side")
        self.task, self.backend, self.overlap = task, backend, overlap
        split = worker_split(threads, backend)
        self.model = load_model(model_path, threads=split[0], backend=backend)
        self.model.check(task=task, scale=scale)
        exact = tiles_meet_exactly(self.model.radius, base_overlap(task, overlap))
        if tile is None:  # None: the default for this model and worker count
            th, tw = default_tile(task, exact=exact, workers=len(split))
        self.tile = (th, tw)
        fits = fixed_tile_workers(task, self.tile, len(split))
        if fits < len(split):  # tiles too large for this many workers: fewer workers, more threads each
            split = worker_split(threads, backend, max_workers=fits)
            self.model = load_model(model_path, threads=split[0], backend=backend)
        self.workers = [self.model] + [load_model(model_path, threads=n, backend=backend) for n in split[1:]]
        self.scale = self.model.scale
        self._path, self._threads = model_path, threads
        self._whole = self.model if len(split) == 1 else None  # all threads on one tile: loaded when needed

    def _tile_models(self, tiles: int) -> list[Runtime | TorchPredictor]:
        """The workers for a photo of this many tiles; a photo of one tile gets one copy of the
        model with all the threads (a single-threaded worker would take twice as long)."""
        if tiles > 1:
            return self.workers[:tiles]
        if self._whole is None:
            self._whole = load_model(self._path, threads=self._threads, backend=self.backend)
        return [self._whole]

    def prepare(self, h: int, w: int) -> None:
        """Let the first worker that will run an h x w photo's tiles allocate for their size now."""
        ph, pw, _, _, _, (th, tw, _, ys, xs) = self._layout(h, w)
        self._tile_models(len(ys) * len(xs))[0].prepare(min(th, h + ph), min(tw, w + pw))

    def load(self, source: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
        """``load_photo``, with the first worker allocating for the photo's tiles while it decodes.

        TFLite's allocation holds the GIL (0.12 s for a 632x696 enhancer tile, most of it page
        faults). Left to the first tile, the first worker's kept the main thread from handing the
        second worker its tile, so the second started two allocations late; here it runs while
        Pillow decodes in one call that does not need the GIL. The other workers allocate at their
        first tile while the first one computes: all of them here would hold the GIL past the end of
        the decode and delay the first tile as well.
        """
        sizes: queue.SimpleQueue = queue.SimpleQueue()
        with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
            decoded = pool.submit(load_photo, source, max_pixels=max_pixels, scale=self.scale,
                                  on_size=lambda h, w: sizes.put((h, w)))
            decoded.add_done_callback(lambda _: sizes.put(None))  # failed before the header: no size comes
            size = sizes.get()
            if size is not None:
                self.prepare(*size)
            return decoded.result()

    def _layout(self, h: int, w: int) -> tuple[int, int, tuple[int, int], int, int | None, tuple]:
        """(bottom pad, right pad, tile bound, overlap, margin, ``tiling.tile_plan``) for an h x w photo."""
        m = self.model.info.size_multiple
        ph, pw = (-h) % m, (-w) % m
        overlap, margin = tile_overlap(self.model.info.task, self.model.radius, self.overlap)
        tile = (self.tile[0] - self.tile[0] % m, self.tile[1] - self.tile[1] % m)
        return ph, pw, tile, overlap, margin, tile_plan(h + ph, w + pw, tile, overlap, margin, m)

    def model_pixels(self, h: int, w: int) -> int:
        """Input pixels the model runs for an h x w photo, recomputed overlaps and padding included."""
        th, tw, _, ys, xs = self._layout(h, w)[5]
        return th * len(ys) * tw * len(xs)

    def bands(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None
              ) -> Iterator[tuple[int, np.ndarray]]:
        """The model over ``rgb`` in tiles that agree with the whole-image run, as output bands.

        For a core that needs sizes divisible by m (the U-Net: 8), the photo is edge-padded to a
        multiple of m once, as the whole-image run pads it, and tiles of a multiple of m are cut at
        multiples of m: every tile sees the bottom/right padding the whole image sees and downsamples
        on the same grid phase (unaligned tiles differed from the whole image by up to 34 levels).
        """
        h, w = rgb.shape[:2]
        canvas, plan, tiles = self.tiling(rgb)
        oh, ow = h * self.scale, w * self.scale
        models = self._tile_models(tiles)  # one per worker: parallel tiles, same bits
        for row, band in tiled_bands(canvas, [m.run for m in models], on_tile=on_tile,
                                     into=[m.run_into for m in models], **plan):
            if row < oh:
                yield row, band[: oh - row, :ow]

    def tiling(self, rgb: np.ndarray) -> tuple[np.ndarray, dict, int]:
        """(the padded canvas, the ``tiling.tiled_bands`` keywords, the number of tiles) with which
        :meth:`bands` runs the model over ``rgb``; its bands are cropped back to ``rgb``'s size x scale."""
        h, w = rgb.shape[:2]
        ph, pw, tile, overlap, margin, (_, _, _, ys, xs) = self._layout(h, w)
        canvas = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else rgb
        plan = {"scale": self.scale, "tile": tile, "overlap": overlap, "margin": margin,
                "align": self.model.info.size_multiple}
        return canvas, plan, len(ys) * len(xs)

    def run(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        """The whole output image: the stacked :meth:`bands`."""
        return stack_bands(self.bands(rgb, on_tile), rgb.shape[0] * self.scale)

    def process(self, job: Job, overwrite: bool, compare: bool, max_pixels: int,
                on_tile: Callable[[int, int], None] | None = None) -> Path:
        targets = [job.target] + ([compare_path(job.target)] if compare else [])
        for target in targets:  # before decoding anything: nothing is computed for an output we cannot write
            if target.exists() and not overwrite:
                raise OutputError(f"{target}: already exists (use --overwrite)")
            check_writable(target)
        photo = self.load(job.source, max_pixels)
        oh, ow = photo.rgb.shape[0] * self.scale, photo.rgb.shape[1] * self.scale
        alpha = _resize_alpha(photo.alpha, (oh, ow)) if photo.alpha is not None else None
        gray = photo.source_mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F")
        if output_format(job.target) in STREAMED_FORMATS and not compare:
            # PNG and JPEG are streamed band by band: memory is bounded by a row of tiles, not by
            # the output image, and the encoder runs beside the model instead of after it.
            write_bands(job.target, ow, oh, self.bands(photo.rgb, on_tile), alpha=alpha,
                        icc_profile=photo.icc_profile, grayscale=gray)
            return job.target
        out = self.run(photo.rgb, on_tile)
        write_image(job.target, out, alpha=alpha, icc_profile=photo.icc_profile, grayscale=gray)
        if compare:
            write_image(targets[1], compare_image(photo.rgb, out))
        return job.target


def compare_path(target: Path) -> Path:
    return target.with_name(target.stem + "_compare.png")


def run_batch(jobs: list[Job], processor: Processor, overwrite: bool = False, compare: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Process every job; a failing photo is reported and the rest still run."""
    done, failed = [], []
    for folder in {job.target.parent for job in jobs}:
        remove_stale_temps(folder)  # what a killed earlier run left behind (live writers' files are kept)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"{processor.task} ({processor.backend})", unit="img", dynamic_ncols=True,
                   disable=None)
    for job in jobs:
        tile_bar = None

        def on_tile(k, total, _job=job):
            nonlocal tile_bar
            if progress and total > 4:
                if tile_bar is None:
                    from tqdm import tqdm

                    tile_bar = tqdm(total=total, desc=f"  {_job.source.name}", unit="tile", leave=False, disable=None,
                                    dynamic_ncols=True)
                tile_bar.update(1)

        try:
            done.append(processor.process(job, overwrite, compare, max_pixels, on_tile))
        except QuantirError as err:
            failed.append((job.source, str(err)))
        except MemoryError:
            failed.append((job.source, f"{job.source}: out of memory (try a smaller --tile)"))
        finally:
            if tile_bar is not None:
                tile_bar.close()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return done, failed
