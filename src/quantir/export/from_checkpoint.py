"""``quantir export``: artifacts from a run directory or checkpoint, with the QAT scales as learned.

PTQ (re-calibration) happens only when asked for, on a calibration folder the user names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from quantir.data.datasets import image_files
from quantir.data.io import read_image
from quantir.data.resize import downscale, mod_crop
from quantir.errors import ConfigError, DataError, ModelFileError
from quantir.export.api import export_artifacts
from quantir.export.config import ExportConfig
from quantir.models import reparameterize_model
from quantir.models.apply import to_model_units
from quantir.quant import checkpoint
from quantir.quant.api import calibrate, convert, prepare_ptq
from quantir.quant.config import QuantConfig
from quantir.quant.observers import RangeMethod


def parity_inputs(info, folder: str | Path, limit: int | None) -> list[np.ndarray]:
    """Model inputs for the parity report: the evaluation photos' LR (SR) or degraded (enhance) versions."""
    pairs = info.eval_pairs(folder, limit=limit)
    return [pairs[i].input for i in range(len(pairs))]


def calibration_inputs(info, folder: str | Path, n: int = 32, size: int = 96, seed: int = 0):
    """Random crops of calibration photos as model inputs (LR crops for SR)."""
    files = image_files(folder)
    rng = np.random.default_rng(seed)
    for k in range(n):
        img = read_image(files[k % len(files)])
        s = info.scale
        if info.is_sr:
            img = mod_crop(img, s)
            img = downscale(img, s) if min(img.shape[:2]) >= size * s else downscale(mod_crop(img, s), s)
        h, w = img.shape[:2]
        c = min(size, h, w)
        c -= c % info.size_multiple
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        crop = img[y:y + c, x:x + c]
        yield to_model_units(torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None], info.pixel_max)


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """What ``quantir export`` was asked to do; written next to the artifacts as config.yaml."""

    source: str
    ptq: RangeMethod | None = None
    calib: str | None = None
    export: ExportConfig = ExportConfig()


def export_checkpoint(source: str | Path, out_dir: str | Path | None = None, options: ExportConfig = ExportConfig(),
                      ptq: str | None = None, calib_dir: str | None = None, parity_dir: str | Path | None = None,
                      parity_limit: int | None = 16, command: str | None = None) -> dict:
    """Artifacts of a checkpoint or run directory: its QAT scales as learned, or PTQ when ``ptq`` is given.

    ``parity_dir``: evaluation photos for the parity report (none: no report).
    """
    source = Path(source)
    record = checkpoint.load(checkpoint.resolve(source))
    kind = record.get("kind")
    if kind == "qat":
        if "float" not in record:
            raise ModelFileError(f"{source}: an inference-only checkpoint (no FP32 reference); export from "
                                 "its training run directory instead")
        float_model = checkpoint.build_float(record["float"], what=str(source))
    elif kind == "float":
        float_model = checkpoint.build_float(record, what=str(source))
    else:
        raise ModelFileError(f"{source}: not a quantir model checkpoint (kind {kind!r})")
    info = float_model.info
    if parity_dir is not None and not Path(parity_dir).is_dir():
        raise DataError(f"{parity_dir}: parity photo folder not found")
    if ptq is not None:
        if calib_dir is None:
            raise ConfigError("--ptq needs --calib DIR: photos for calibration (never your evaluation photos)")
        deploy = reparameterize_model(float_model)
        qcfg = QuantConfig(act_range=RangeMethod(ptq), learn_act_ranges=False)
        p = 64 - 64 % info.size_multiple
        prepared = prepare_ptq(deploy, torch.rand(2, 3, p, p) * info.pixel_max, qcfg)
        calibrate(prepared, calibration_inputs(info, calib_dir))
        float_model = deploy
    elif kind == "qat":
        prepared = checkpoint.build_qat(record, what=str(source))
    else:
        raise ConfigError(f"{source} holds an FP32 model: export a QAT checkpoint (run dir), or quantize it now "
                          "with --ptq minmax|percentile|mse --calib DIR")
    images = parity_inputs(info, parity_dir, parity_limit) if parity_dir else []
    if out_dir is None:
        out_dir = (source / "export") if source.is_dir() else source.parent / "export"
    job = ExportJob(str(source), RangeMethod(ptq) if ptq else None, calib_dir, options)
    return export_artifacts(convert(prepared), float_model.eval(), out_dir, options, parity_images=images,
                            config=job, command=command, reference=prepared)
