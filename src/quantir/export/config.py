"""``ExportConfig``: which artifacts to write and how to check them, for ``quantir train`` and ``export`` alike."""

from __future__ import annotations

import dataclasses
from typing import Literal

from quantir.config import check_choices
from quantir.errors import require

Format = Literal["tflite", "onnx"]
FORMATS: tuple[Format, ...] = ("tflite", "onnx")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    enabled: bool = True  # training runs: export after QAT
    formats: tuple[Format, ...] = FORMATS
    shape: tuple[int, int] | None = None  # extra fixed-shape int8 TFLite (e.g. [720, 1280] for MAI 2026)
    parity_limit: int | None = None  # evaluation photos used for the parity report (None: all)
    threads: int = 2  # runtime threads of the parity check

    def __post_init__(self):
        check_choices(self)
        require(self.shape is None or min(self.shape) > 0, "shape must be positive")
        require(self.parity_limit is None or self.parity_limit > 0, "parity_limit must be positive")
        require(self.threads >= 1, "threads must be >= 1")
