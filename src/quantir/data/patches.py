"""Random training patches as a map-style torch Dataset.

Each item is a pure function of ``(seed, epoch, index)``: workers, DDP ranks and a resumed run
draw exactly the same patches. Images are picked with probability proportional to their
area, flat crops (little gradient energy) are re-drawn, and flips/transposes are applied to
input, target and (optional) teacher output alike. Items are uint8 CHW tensors; the trainer
scales them to the model's pixel range.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from quantir.data.degrade import DegradationConfig, degrade


@dataclasses.dataclass
class Source:
    """One training image: the target, and the input at 1/scale size (None = synthesise it)."""

    target: np.ndarray
    input: np.ndarray | None = None
    teacher: np.ndarray | None = None  # cached teacher output, same size as target
    name: str = ""


def gradient_energy(patch: np.ndarray) -> float:
    g = patch.astype(np.float32).mean(axis=2) if patch.ndim == 3 else patch.astype(np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def augment(arrays: list[np.ndarray | None], code: int) -> list[np.ndarray | None]:
    """Apply one of the 8 dihedral transforms (bit 0: h-flip, bit 1: v-flip, bit 2: transpose)."""
    out = []
    for a in arrays:
        if a is not None:
            if code & 1:
                a = a[:, ::-1]
            if code & 2:
                a = a[::-1]
            if code & 4:
                a = a.transpose(1, 0, 2)
            a = np.ascontiguousarray(a)
        out.append(a)
    return out


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


class PatchDataset(Dataset):
    """Patches of ``patch`` input pixels (``patch * scale`` target pixels).

    With ``degradation`` set and no stored input, the input is the degraded target crop
    (synthetic enhancement pairs); with ``scale > 1`` the stored LR image is cropped in step.
    """

    def __init__(self, sources: list[Source], patch: int, scale: int = 1, samples_per_epoch: int = 1000,
                 seed: int = 0, augment: bool = True, flat_threshold: float = 1.0, max_tries: int = 10,
                 degradation: DegradationConfig | None = None):
        if not sources:
            raise ValueError("no training images")
        self.sources, self.patch, self.scale = sources, int(patch), int(scale)
        self.samples_per_epoch, self.seed, self.augment = int(samples_per_epoch), int(seed), augment
        self.flat_threshold, self.max_tries, self.degradation = flat_threshold, max_tries, degradation
        self.epoch = 0
        sizes = []
        for s in sources:
            h, w = s.target.shape[:2]
            if h < patch * scale or w < patch * scale:
                raise ValueError(f"image {s.name or '?'} ({w}x{h}) is smaller than the patch {patch * scale}")
            sizes.append(h * w)
        self.weights = np.asarray(sizes, dtype=np.float64) / float(sum(sizes))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _crop(self, src: Source, rng: np.random.Generator):
        p, s = self.patch, self.scale
        h, w = src.target.shape[:2]
        y = int(rng.integers(0, h // s - p + 1))
        x = int(rng.integers(0, w // s - p + 1))
        tgt = src.target[y * s:(y + p) * s, x * s:(x + p) * s]
        inp = src.input[y:y + p, x:x + p] if src.input is not None else None
        tea = src.teacher[y * s:(y + p) * s, x * s:(x + p) * s] if src.teacher is not None else None
        return inp, tgt, tea

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        for _ in range(self.max_tries):  # a flat crop re-draws both the image and the position
            src = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
            inp, tgt, tea = self._crop(src, rng)
            if gradient_energy(tgt) >= self.flat_threshold:
                break
        if inp is None:
            inp = degrade(tgt, rng, self.degradation) if self.degradation is not None else tgt
        code = int(rng.integers(0, 8)) if self.augment else 0
        inp, tgt, tea = augment([inp, tgt, tea], code)
        item = {"input": _chw(inp), "target": _chw(tgt)}
        if tea is not None:
            item["teacher"] = _chw(tea)
        return item
