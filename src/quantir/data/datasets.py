"""Dataset layouts and evaluation pairs (numpy only; the torch patch datasets live in ``patches``).

Pairs are always matched by file name, never by list order (the QATIE reference paired two
unsorted globs by index). Supported layouts:

* a folder of clean photos (LR or degraded inputs are synthesised on the fly);
* paired folders ``input_dir`` / ``target_dir`` with the same stems (``0001x3.png`` matches ``0001.png``);
* DIV2K: ``DIV2K_{train,valid}_HR`` with optional ``DIV2K_{train,valid}_LR_bicubic/X{s}``;
* DPED: ``<root>/<phone>/training_data/{<phone>,canon}`` and ``test_data/patches/{<phone>,canon}``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quantir.data.degrade import DegradationConfig, degrade, stable_seed
from quantir.data.io import list_images, read_image
from quantir.data.resize import downscale, mod_crop
from quantir.errors import DataError


@dataclasses.dataclass
class Pair:
    name: str
    input: np.ndarray  # uint8 HxWx3
    target: np.ndarray  # uint8 (s*H)x(s*W)x3


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no images found")
    return files


def _stem_key(path: Path, scale: int | None) -> str:
    stem = path.stem
    if scale:
        stem = re.sub(rf"([_-]?x{scale}|[_-]?X{scale})$", "", stem)
    return stem


def match_pairs(input_files: list[Path], target_files: list[Path], scale: int | None = None) -> list[tuple[Path, Path]]:
    """Pair files by stem (DIV2K's ``x3`` suffix ignored). Every target must find its input."""
    inputs = {}
    for p in input_files:
        inputs.setdefault(_stem_key(p, scale), p)
    pairs, missing = [], []
    for t in target_files:
        key = _stem_key(t, scale)
        if key in inputs:
            pairs.append((inputs[key], t))
        else:
            missing.append(t.name)
    if missing:
        raise DataError(f"{len(missing)} target image(s) have no input with the same name, e.g. {missing[0]}")
    return pairs


class PairSequence(Sequence):
    """Lazily loaded evaluation pairs (whole images)."""

    def __init__(self, names: list[str], loader):
        self.names, self._loader = names, loader

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self._loader(i)


def sr_pairs(hr_dir: str | Path, scale: int, lr_dir: str | Path | None = None, limit: int | None = None) -> PairSequence:
    """HR photos with their LR: read from ``lr_dir`` by name, else antialiased bicubic of the mod-cropped HR."""
    hr_files = image_files(hr_dir)[:limit]
    lr_by_hr = dict((t, i) for i, t in match_pairs(image_files(lr_dir), hr_files, scale)) if lr_dir else {}

    def load(i: int) -> Pair:
        hr = read_image(hr_files[i])
        if min(hr.shape[:2]) < 4 * scale:  # the models need a few LR pixels per side
            raise DataError(f"{hr_files[i]}: {hr.shape[1]}x{hr.shape[0]} is too small for x{scale} "
                            f"evaluation (at least {4 * scale} pixels per side)")
        hr = mod_crop(hr, scale)
        if lr_dir:
            lr = read_image(lr_by_hr[hr_files[i]])
            if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
                hr = hr[: lr.shape[0] * scale, : lr.shape[1] * scale]
        else:
            lr = downscale(hr, scale)
        return Pair(hr_files[i].name, lr, hr)

    return PairSequence([p.name for p in hr_files], load)


def enhance_pairs(clean_dir: str | Path, seed: int = 0, degradation: DegradationConfig = DegradationConfig(),
                  limit: int | None = None, multiple: int = 1) -> PairSequence:
    """Synthetic-degradation pairs with a per-file seed, so every run sees the same inputs."""
    files = image_files(clean_dir)[:limit]

    def load(i: int) -> Pair:
        clean = mod_crop(read_image(files[i]), multiple)
        rng = np.random.default_rng(stable_seed(files[i].name, seed))
        return Pair(files[i].name, degrade(clean, rng, degradation), clean)

    return PairSequence([p.name for p in files], load)


def folder_pairs(input_dir: str | Path, target_dir: str | Path, scale: int | None = None,
                 limit: int | None = None) -> PairSequence:
    pairs = match_pairs(image_files(input_dir), image_files(target_dir), scale)[:limit]

    def load(i: int) -> Pair:
        inp, tgt = pairs[i]
        return Pair(tgt.name, read_image(inp), read_image(tgt))

    return PairSequence([t.name for _, t in pairs], load)


def div2k_dirs(root: str | Path, split: str, scale: int) -> tuple[Path, Path | None]:
    root = Path(root)
    hr = root / f"DIV2K_{split}_HR"
    if not hr.is_dir():
        raise DataError(f"{root}: not a DIV2K folder (missing DIV2K_{split}_HR)")
    lr = root / f"DIV2K_{split}_LR_bicubic" / f"X{scale}"
    return hr, (lr if lr.is_dir() else None)


def dped_dirs(root: str | Path, phone: str, split: str) -> tuple[Path, Path]:
    """(phone_dir, canon_dir) for DPED ``train`` (training_data) or ``test`` (test_data/patches)."""
    root = Path(root)
    base = root / phone if (root / phone).is_dir() else root
    sub = base / "training_data" if split == "train" else base / "test_data" / "patches"
    phone_dir, canon_dir = sub / phone, sub / "canon"
    if not (phone_dir.is_dir() and canon_dir.is_dir()):
        raise DataError(f"{root}: not a DPED folder for phone {phone!r} (expected {phone_dir} and {canon_dir})")
    return phone_dir, canon_dir


def holdout_split(files: list[Path], n_holdout: int) -> tuple[list[Path], list[Path]]:
    """Deterministic split: every k-th file (by name order) is held out for validation."""
    files = sorted(files, key=lambda p: p.name)
    if n_holdout <= 0:
        return files, []
    if n_holdout >= len(files):
        raise DataError(f"cannot hold out {n_holdout} of {len(files)} images for validation")
    step = len(files) / n_holdout
    held = {int(step * k + step / 2) for k in range(n_holdout)}
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]
