"""Apply a built-in (or given) INT8 model to photo files: what ``quantir upscale`` / ``enhance`` call.

Torch-free with the TFLite and ONNX backends. Large photos run in tiles (memory bounded by a
row of tiles plus the output image); alpha is carried over (resized for SR), ICC profiles are
kept, EXIF orientation is applied, grayscale stays grayscale, 16-bit input becomes 8-bit output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from quantir.data.io import READ_SUFFIXES, Photo, load_photo, output_format, write_image
from quantir.errors import ImageError, ModelFileError, QuantirError
from quantir.evaluate.tiling import tiled_apply

ASSETS = Path(__file__).with_name("assets")
BUILTIN = {"sr": "sr_x3", "enhance": "enhance"}
BACKEND_FILES = {"tflite": "model_int8.tflite", "onnx": "model_int8.onnx", "torch": "qat_final.pt"}


def builtin_model(task: str, backend: str = "tflite") -> Path:
    path = ASSETS / BUILTIN[task] / BACKEND_FILES[backend]
    if not path.is_file():
        raise ModelFileError(f"no built-in {task} model for backend {backend!r} at {path}; pass --model PATH")
    return path


@dataclasses.dataclass
class Job:
    source: Path
    target: Path


def plan_jobs(inputs: list[str], output: str, ext: str | None = None) -> list[Job]:
    """Map input files/folders to output paths; several inputs (or a folder) need a folder output."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in READ_SUFFIXES)
        else:
            files.append(p)  # missing files are reported per job
    out = Path(output)
    folder_mode = len(files) != 1 or any(Path(i).is_dir() for i in inputs) or out.is_dir() or not out.suffix
    if not folder_mode:
        output_format(out)  # unknown extension: fail before any work
        return [Job(files[0], out)]
    suffix = ext or ".png"
    if not suffix.startswith("."):
        suffix = "." + suffix
    output_format(Path("x" + suffix))
    names: dict[str, int] = {}
    jobs = []
    for f in files:
        stem = f.stem
        names[stem] = names.get(stem, 0) + 1
        if names[stem] > 1:
            stem = f"{stem}_{names[stem]}"
        jobs.append(Job(f, out / f"{stem}{suffix}"))
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


class Processor:
    """Runs one model over photos; ``tile`` is in input pixels."""

    def __init__(self, model_path: Path, task: str, scale: int, backend: str = "tflite", tile: int = 256,
                 threads: int = 2):
        self.task, self.backend, self.tile = task, backend, tile
        if backend == "torch":
            from quantir.train.checkpoint import load_torch_predictor

            self.model = load_torch_predictor(model_path)
        else:
            from quantir.export.runtime import load_runtime

            self.model = load_runtime(model_path, threads=threads)
            expected = {"tflite": ".tflite", "onnx": ".onnx"}[backend]
            if model_path.suffix.lower() != expected:
                raise ModelFileError(f"{model_path}: backend {backend!r} needs a {expected} file")
        self.model.check(task=task, scale=scale)
        self.scale = self.model.scale

    def run(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
        overlap = 32 if self.task == "sr" else 48
        tile = max(self.tile, 2 * overlap + 8)
        return tiled_apply(rgb, self.model.run, scale=self.scale, tile=tile, overlap=overlap, on_tile=on_tile)

    def process(self, job: Job, overwrite: bool, compare: bool, max_pixels: int,
                on_tile: Callable[[int, int], None] | None = None) -> Path:
        if job.target.exists() and not overwrite:
            raise ImageError(f"{job.target}: already exists (use --overwrite)")
        photo: Photo = load_photo(job.source, max_pixels=max_pixels)
        out = self.run(photo.rgb, on_tile)
        alpha = _resize_alpha(photo.alpha, out.shape[:2]) if photo.alpha is not None else None
        gray = photo.source_mode in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F")
        write_image(job.target, out, alpha=alpha, icc_profile=photo.icc_profile, grayscale=gray)
        if compare:
            cmp_path = job.target.with_name(job.target.stem + "_compare.png")
            write_image(cmp_path, compare_image(photo.rgb, out))
        return job.target


def run_batch(jobs: list[Job], processor: Processor, overwrite: bool = False, compare: bool = False,
              max_pixels: int = 120_000_000, progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Process every job; a failing photo is reported and the rest still run."""
    done, failed = [], []
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
