"""Turn a model spec (baseline name, .tflite, .onnx, checkpoint or run dir) into a uint8 predictor.

TFLite and ONNX files go through ``quantir.export.runtime`` and never import torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantir.errors import ModelFileError
from quantir.evaluate.evaluate import bicubic_predictor, identity_predictor
from quantir.evaluate.tiling import tiled_apply


@dataclasses.dataclass
class LoadedPredictor:
    name: str
    predict: Callable[[np.ndarray], np.ndarray]
    task: str
    scale: int


def load_predictor(spec: str, task: str, scale: int, tile: int = 0, threads: int = 2,
                   overlap: int = 32) -> LoadedPredictor:
    if spec == "bicubic":
        if task != "sr":
            raise ModelFileError("'bicubic' is the SR baseline; use 'input' for enhancement")
        return LoadedPredictor("bicubic", bicubic_predictor(scale), task, scale)
    if spec == "input":
        if task != "enhance":
            raise ModelFileError("'input' is the enhancement baseline; use 'bicubic' for SR")
        return LoadedPredictor("input", identity_predictor(), task, 1)
    path = Path(spec)
    if not path.exists():
        raise ModelFileError(f"{spec}: no such model file or run directory (or use 'bicubic' / 'input')")
    if path.suffix.lower() in (".tflite", ".onnx"):
        from quantir.export.runtime import load_runtime

        model = load_runtime(path, threads=threads)
    else:
        from quantir.train.checkpoint import load_torch_predictor

        model = load_torch_predictor(path)
    model.check(task=task, scale=scale)
    fn = model.run
    if tile:
        def fn(img, _run=model.run):
            return tiled_apply(img, _run, scale=model.scale, tile=tile, overlap=overlap)
    return LoadedPredictor(path.name, fn, task, scale)
