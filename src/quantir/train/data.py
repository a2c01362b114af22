"""Training, validation, calibration and evaluation data from a ``DataConfig``.

Splits never overlap: validation photos are held out of the training folder by name, the
calibration batches are training patches, and evaluation photos come from their own folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from quantir.data.datasets import (Pair, PairSequence, div2k_dirs, dped_dirs, folder_pairs, holdout_split,
                                   image_files, match_pairs, sr_pairs)
from quantir.data.io import list_images, read_image
from quantir.data.patches import PatchDataset, Source
from quantir.data.resize import downscale, make_clean_hr, mod_crop
from quantir.errors import DataError
from quantir.models.apply import to_model_units
from quantir.train.config import TrainConfig


@dataclasses.dataclass
class Splits:
    sources: list[Source]
    val: list[Pair]
    eval: PairSequence | None
    train_names: list[str]
    stress: PairSequence | None = None  # the hard photos, when their folder exists
    qat_select: list[Pair] | None = None  # qat.select_dir's photos, loaded once: scored every val_every steps


def _center_crop(img: np.ndarray, size: int, multiple: int) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = min(h, size), min(w, size)
    ch, cw = ch - ch % multiple, cw - cw % multiple
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[y:y + ch, x:x + cw]


def _source(cfg: TrainConfig, hr: np.ndarray, name: str, lr: np.ndarray | None = None) -> Source:
    """A training photo. SR inputs are computed once (bicubic LR); enhancement inputs stay None and
    are degraded afresh for every patch."""
    info = cfg.task_info
    target = mod_crop(hr, info.scale)
    if lr is None and info.is_sr:
        lr = downscale(target, info.scale)
    return Source(target=target, input=lr, name=name)


def _val_pair(cfg: TrainConfig, hr: np.ndarray, name: str, multiple: int) -> Pair:
    info = cfg.task_info
    target = _center_crop(hr, cfg.data.val_size, max(info.scale, multiple))
    return info.synthetic_pair(target, name, seed=cfg.seed + 1, degradation=cfg.data.degradation)


def build_splits(cfg: TrainConfig, multiple: int = 1) -> Splits:
    d = cfg.data
    if d.layout == "dped":
        return _dped_splits(cfg)
    if d.layout == "div2k":
        hr_dir, lr_dir = div2k_dirs(d.root, "train", cfg.scale)
        files = image_files(hr_dir)
        factor = 1 if d.hr_downscale is None else d.hr_downscale
    else:
        files = image_files(d.train_dir)
        factor = d.hr_downscale
    train_files, val_files = holdout_split(files, d.val_holdout)
    for extra in d.extra_train_dirs:
        train_files += image_files(extra)
    lr_by_hr = {}
    if d.layout == "div2k" and lr_dir is not None:
        lr_by_hr = {t: i for i, t in match_pairs(image_files(lr_dir), train_files, cfg.scale)}
    sources = []
    for f in train_files:
        hr = make_clean_hr(read_image(f), factor)
        lr = read_image(lr_by_hr[f]) if f in lr_by_hr else None
        if lr is not None:
            hr = hr[: lr.shape[0] * cfg.scale, : lr.shape[1] * cfg.scale]
        sources.append(_source(cfg, hr, f.name, lr))
    val = [_val_pair(cfg, make_clean_hr(read_image(f), factor), f.name, multiple) for f in val_files]
    return Splits(sources, val, eval_pairs(cfg), [f.name for f in train_files], stress_pairs(cfg),
                  qat_select_pairs(cfg))


def _dped_splits(cfg: TrainConfig) -> Splits:
    d = cfg.data
    phone_dir, canon_dir = dped_dirs(d.root, d.phone, "train")
    pairs = match_pairs(image_files(phone_dir), image_files(canon_dir))
    n_val = max(d.val_holdout, 1) * 50  # patches are tiny: hold out 50 per requested photo
    if len(pairs) <= n_val:
        raise DataError(f"{phone_dir}: only {len(pairs)} pairs, not enough to hold out {n_val} for validation")
    step = len(pairs) // n_val
    val_idx = set(range(step // 2, len(pairs), step)[:n_val])
    sources = [Source(target=read_image(t), input=read_image(i), name=t.name)
               for k, (i, t) in enumerate(pairs) if k not in val_idx]
    val = [Pair(pairs[k][1].name, read_image(pairs[k][0]), read_image(pairs[k][1])) for k in sorted(val_idx)]
    return Splits(sources, val, eval_pairs(cfg), [s.name for s in sources], stress_pairs(cfg),
                  qat_select_pairs(cfg))


def eval_pairs(cfg: TrainConfig) -> PairSequence | None:
    """The run's evaluation pairs (never trained, validated or calibrated on); None without an eval folder."""
    d = cfg.data
    if d.layout == "div2k":
        hr_dir, lr_dir = div2k_dirs(d.root, "valid", cfg.scale)
        return sr_pairs(hr_dir, cfg.scale, lr_dir, limit=d.eval_limit)
    if d.layout == "dped":  # real phone photos and their DSLR targets
        test_phone, test_canon = dped_dirs(d.root, d.phone, "test")
        return folder_pairs(test_phone, test_canon, limit=d.eval_limit)
    if not d.eval_dir:
        return None
    if not Path(d.eval_dir).is_dir():
        raise DataError(f"{d.eval_dir}: evaluation folder not found (run 'quantir data fetch samples --out data/samples')")
    return cfg.task_info.eval_pairs(d.eval_dir, d.eval_inputs_dir, limit=d.eval_limit, seed=0,
                                    degradation=d.degradation)


def stress_pairs(cfg: TrainConfig) -> PairSequence | None:
    """The hard photos of ``data.stress_dir`` with the eval photos' degradation; None when absent."""
    d = cfg.data
    if not d.stress_dir or not Path(d.stress_dir).is_dir() or not list_images(Path(d.stress_dir)):
        return None
    return cfg.task_info.eval_pairs(d.stress_dir, None, limit=d.eval_limit, seed=0, degradation=d.degradation)


def qat_select_pairs(cfg: TrainConfig) -> list[Pair] | None:
    """The photos of ``qat.select_dir`` with the eval photos' degradation; None when not set (or no QAT)."""
    folder = cfg.qat.select_dir
    if not cfg.qat.enabled or folder is None:
        return None
    if not Path(folder).is_dir() or not list_images(Path(folder)):
        raise DataError(f"{folder}: qat.select_dir has no photos (for the sample sets: "
                        "'quantir data fetch samples --out data/samples --sets stress-val')")
    return list(cfg.task_info.eval_pairs(folder, None, limit=None, seed=0, degradation=cfg.data.degradation))


class StepSampler(Sampler):
    """Batches of dataset indices as a pure function of the step: step k of rank r gets
    indices [(k * world + r) * batch, ... + batch). A resumed run continues the exact sequence."""

    def __init__(self, start_step: int, steps: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.steps, self.batch, self.rank, self.world = start_step, steps, batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.start, self.steps):
            base = (k * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class _Indexed(torch.utils.data.Dataset):
    """Turns a PatchDataset into an infinite index space with a stage-specific seed."""

    def __init__(self, base: PatchDataset):
        self.base = base

    def __len__(self):
        return 2**62

    def __getitem__(self, i):
        return self.base[i]


def patch_loader(cfg: TrainConfig, sources: list[Source], patch: int, batch: int, steps: int, start_step: int,
                 salt: int, augment: bool = True, rank: int = 0, world: int = 1, pin_memory: bool = False) -> DataLoader:
    # only enhancement sources lack a fixed input: theirs are degraded afresh for every patch
    degradation = cfg.data.degradation if any(s.input is None for s in sources) else None
    ds = PatchDataset(sources, patch, cfg.sr_scale, samples_per_epoch=1, seed=cfg.seed * 1000 + salt,
                      augment=augment, flat_threshold=cfg.data.flat_threshold, degradation=degradation)
    return DataLoader(_Indexed(ds), batch_sampler=StepSampler(start_step, steps, batch, rank, world),
                      num_workers=cfg.data.workers, persistent_workers=False, pin_memory=pin_memory)


def calibration_batches(cfg: TrainConfig, sources: list[Source], n: int, pixel_max: float, salt: int = 97):
    """Un-augmented training patches for range calibration and BN recalibration (never val/eval data)."""
    loader = patch_loader(cfg, sources, cfg.data.patch, cfg.data.batch, n, 0, salt, augment=False)
    for item in loader:
        yield to_model_units(item["input"], pixel_max)
