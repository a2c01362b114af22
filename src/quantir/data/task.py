"""What depends on the task, owned by one type (torch-free): ``Task`` and ``ModelInfo``.

Callers ask the model's ``ModelInfo`` for the border shave, the baseline (bicubic for SR, the
degraded input for enhancement) and how evaluation pairs are made, instead of branching on the
task themselves. Runtimes build the same object from an artifact's metadata.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantir.data.datasets import Pair, PairSequence, enhance_pairs, folder_pairs, sr_pairs
from quantir.data.degrade import DegradationConfig, degrade, stable_seed
from quantir.data.resize import downscale, upscale
from quantir.errors import ConfigError, ModelFileError
from quantir.numerics import io_scale

Predictor = Callable[[np.ndarray], np.ndarray]


class Task(str, enum.Enum):
    SR = "sr"
    ENHANCE = "enhance"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a runtime needs to feed a model, and what evaluation needs to score it."""

    task: Task
    scale: int = 1
    pixel_max: float = 255.0  # inputs/outputs span [0, pixel_max]
    size_multiple: int = 1  # H and W the core graph needs to be divisible by

    def __post_init__(self):
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError:
            raise ConfigError(f"task {self.task!r} is not one of {[t.value for t in Task]}") from None
        if self.scale < 1 or (self.task is Task.ENHANCE and self.scale != 1):
            raise ConfigError(f"a {self.task.value} model cannot have scale {self.scale}")

    @classmethod
    def from_meta(cls, meta: dict) -> ModelInfo:
        """From an artifact's ``quantir`` metadata record."""
        return cls(task=meta.get("task", "sr"), scale=int(meta.get("scale", 1)),
                   pixel_max=float(meta.get("pixel_max", 255.0)), size_multiple=int(meta.get("size_multiple", 1)))

    @property
    def io_scale(self) -> float:
        return io_scale(self.pixel_max)

    @property
    def is_sr(self) -> bool:
        return self.task is Task.SR

    @property
    def border(self) -> int:
        """Pixels shaved at every border for the Y metrics (the literature's convention: the SR scale)."""
        return self.scale if self.is_sr else 0

    @property
    def title(self) -> str:
        return f"x{self.scale} super-resolution" if self.is_sr else "photo enhancement"

    @property
    def baseline_name(self) -> str:
        return "bicubic" if self.is_sr else "input"

    def baseline(self) -> Predictor:
        """What the model must beat: bicubic upscaling for SR, the degraded input itself for enhancement."""
        if self.is_sr:
            return lambda lr: upscale(lr, self.scale)
        return lambda x: x

    def eval_pairs(self, target_dir: str | Path, inputs_dir: str | Path | None = None, limit: int | None = None,
                   seed: int = 0, degradation: DegradationConfig = DegradationConfig()) -> PairSequence:
        """Evaluation pairs of clean targets: real inputs matched by name, else bicubic LR or synthetic degradation."""
        if inputs_dir:
            return folder_pairs(inputs_dir, target_dir, scale=self.scale if self.is_sr else None, limit=limit)
        if self.is_sr:
            return sr_pairs(target_dir, self.scale, limit=limit)
        return enhance_pairs(target_dir, seed=seed, degradation=degradation, limit=limit)

    def synthetic_pair(self, target: np.ndarray, name: str, seed: int = 0,
                       degradation: DegradationConfig = DegradationConfig()) -> Pair:
        """An input made from a clean target (mod-cropped to the scale): bicubic LR, or a seeded degradation."""
        if self.is_sr:
            return Pair(name, downscale(target, self.scale), target)
        rng = np.random.default_rng(stable_seed(name, seed))
        return Pair(name, degrade(target, rng, degradation), target)

    def check(self, task: str | None = None, scale: int | None = None, what: str = "model") -> None:
        """One-line error when a model is used for another task or scale than it was made for."""
        if task is not None and Task(task) is not self.task:
            raise ModelFileError(f"{what} is a {self.task.value!r} model, not {Task(task).value!r}")
        if scale is not None and self.is_sr and scale != self.scale:
            raise ModelFileError(f"{what} upscales x{self.scale}, not x{scale}")
