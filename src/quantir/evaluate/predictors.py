"""One loader for every model file, and uint8 predictors over them (or over a baseline).

``load_model`` picks the backend from the file: .tflite / .onnx go through
``quantir.export.runtime`` and never import torch; anything else is a quantir checkpoint (or a
run directory) and runs the float or fake-quant torch model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantir.data.task import ModelInfo, Task
from quantir.data.tiling import TileCut, tiled_apply
from quantir.errors import ModelFileError
from quantir.export.runtime import SUFFIXES, Runtime, load_runtime

BACKENDS = ("tflite", "onnx", "torch")


class TorchPredictor:
    """uint8 -> uint8 predictor over a float or fake-quant checkpoint, with the runtimes' interface."""

    backend = "torch"
    radius: int | None = None  # receptive field not read from a torch graph: the photo path's default overlap

    def __init__(self, model, path: Path):
        self.model, self.path, self.info = model, path, model.info
        self.task, self.scale = self.info.task, self.info.scale

    def check(self, task: str | None = None, scale: int | None = None) -> None:
        self.info.check(task, scale, what=f"{self.path.name} (checkpoint)")

    def prepare(self, h: int, w: int) -> None:
        """Nothing to allocate ahead (the runtimes' interface)."""

    def run(self, img: np.ndarray) -> np.ndarray:
        from quantir.models.apply import run_uint8

        return run_uint8(self.model, img)

    def run_into(self, img: np.ndarray, cut: TileCut) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`run` as a photo-path tile worker (``tiling.TileIntoFn``)."""
        return cut.write(self.run(img))


def load_model(path: str | Path, threads: int = 2, backend: str | None = None) -> Runtime | TorchPredictor:
    """A runnable model from a .tflite/.onnx artifact, a checkpoint or a run directory.

    ``backend`` (optional) states what the caller expects; a file of another kind is refused.
    """
    path = Path(path)
    kind = path.suffix.lower().lstrip(".") if path.suffix.lower() in SUFFIXES else "torch"
    if backend is not None and backend != kind:
        wanted = f"a .{backend} file" if backend != "torch" else "a checkpoint or run directory"
        raise ModelFileError(f"{path}: backend {backend!r} needs {wanted}")
    if kind != "torch":
        return load_runtime(path, threads=threads)
    import torch

    from quantir.quant import checkpoint

    torch.set_num_threads(threads)
    return TorchPredictor(checkpoint.build(checkpoint.load(checkpoint.resolve(path)), what=str(path)), path)


@dataclasses.dataclass
class LoadedPredictor:
    name: str
    predict: Callable[[np.ndarray], np.ndarray]
    info: ModelInfo


def load_predictor(spec: str, task: str, scale: int, tile: int = 0, threads: int = 2,
                   overlap: int = 32) -> LoadedPredictor:
    """``spec``: a model path, or the task's baseline name ('bicubic' for SR, 'input' for enhancement)."""
    info = ModelInfo(task=task, scale=scale if Task(task) is Task.SR else 1)
    if spec in ("bicubic", "input"):
        if spec != info.baseline_name:
            raise ModelFileError(f"{spec!r} is not the {info.task.value} baseline; use {info.baseline_name!r}")
        return LoadedPredictor(spec, info.baseline(), info)
    path = Path(spec)
    if not path.exists():
        raise ModelFileError(f"{spec}: no such model file or run directory (or use {info.baseline_name!r})")
    model = load_model(path, threads=threads)
    model.check(task=task, scale=scale)
    fn = model.run
    if tile:
        def fn(img, _run=model.run):
            return tiled_apply(img, _run, scale=model.scale, tile=tile, overlap=overlap)
    return LoadedPredictor(path.name, fn, model.info)
