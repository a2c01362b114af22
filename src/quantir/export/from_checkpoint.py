"""``quantir export``: artifacts from a run directory or checkpoint, with the QAT scales as learned.

PTQ (re-calibration) happens only when asked for, on a calibration folder the user names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from quantir.data.datasets import enhance_pairs, sr_pairs
from quantir.data.io import read_image
from quantir.data.resize import downscale, mod_crop
from quantir.errors import ConfigError, DataError, ModelFileError
from quantir.export.api import ExportOptions, export_artifacts
from quantir.quant.config import QuantConfig
from quantir.quant.observers import RangeMethod
from quantir.train import checkpoint


def _parity_inputs(info, folder: str | Path, limit: int) -> list[np.ndarray]:
    pairs = sr_pairs(folder, info.scale, limit=limit) if info.task == "sr" else enhance_pairs(folder, limit=limit)
    return [pairs[i].input for i in range(len(pairs))]


def calibration_inputs(info, folder: str | Path, n: int = 32, size: int = 96, seed: int = 0):
    """Random crops of calibration photos as model inputs (LR crops for SR)."""
    from quantir.data.datasets import image_files

    files = image_files(folder)
    rng = np.random.default_rng(seed)
    for k in range(n):
        img = read_image(files[k % len(files)])
        s = info.scale
        if info.task == "sr":
            img = mod_crop(img, s)
            img = downscale(img, s) if min(img.shape[:2]) >= size * s else downscale(mod_crop(img, s), s)
        h, w = img.shape[:2]
        c = min(size, h, w)
        c -= c % info.size_multiple
        y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
        crop = img[y:y + c, x:x + c]
        yield torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float() * (info.pixel_max / 255.0)


def _default_parity_dir(source: Path) -> Path | None:
    cfg_file = source / "config.yaml" if source.is_dir() else None
    if cfg_file is not None and cfg_file.is_file():
        data = yaml.safe_load(cfg_file.read_text()) or {}
        eval_dir = (data.get("data") or {}).get("eval_dir")
        if eval_dir and Path(eval_dir).is_dir():
            return Path(eval_dir)
    default = Path("data/samples/eval")
    return default if default.is_dir() else None


def export_checkpoint(source: str | Path, out_dir: str | Path | None = None, formats=("tflite", "onnx"),
                      shape: tuple[int, int] | None = None, ptq: str | None = None, calib_dir: str | None = None,
                      parity_dir: str | None = None, parity_limit: int = 16, threads: int = 2,
                      command: str | None = None) -> dict:
    source = Path(source)
    record = checkpoint.load(checkpoint.resolve(source))
    kind = record.get("kind")
    if kind == "qat":
        if "float" not in record:
            raise ModelFileError(f"{source}: an inference-only checkpoint (no FP32 reference); export from "
                                 "its training run directory instead")
        float_model = checkpoint.build_float(record["float"])
    elif kind == "float":
        float_model = checkpoint.build_float(record)
    else:
        raise ConfigError(f"{source}: not a quantir model checkpoint")
    info = float_model.info
    if ptq is not None:
        if calib_dir is None:
            raise ConfigError("--ptq needs --calib DIR: photos for calibration (never your evaluation photos)")
        from quantir.models import reparameterize_model
        from quantir.quant.api import calibrate, prepare_ptq

        deploy = reparameterize_model(float_model)
        qcfg = QuantConfig(act_range=RangeMethod(ptq), learn_act_ranges=False)
        p = 64 - 64 % info.size_multiple
        prepared = prepare_ptq(deploy, torch.rand(2, 3, p, p) * info.pixel_max, qcfg)
        calibrate(prepared, calibration_inputs(info, calib_dir))
        float_model = deploy
    elif kind == "qat":
        prepared = checkpoint.build_qat(record)
    else:
        raise ConfigError(f"{source} holds an FP32 model: export a QAT checkpoint (run dir), or quantize it now "
                          "with --ptq minmax|percentile|mse --calib DIR")
    parity_src = Path(parity_dir) if parity_dir else _default_parity_dir(source)
    if parity_dir and not Path(parity_dir).is_dir():
        raise DataError(f"{parity_dir}: parity photo folder not found")
    images = _parity_inputs(info, parity_src, parity_limit) if parity_src else []
    if out_dir is None:
        out_dir = (source / "export") if source.is_dir() else source.parent / "export"
    return export_artifacts(prepared, float_model.eval(), out_dir, ExportOptions(formats=tuple(formats), shape=shape,
                                                                                 threads=threads),
                            parity_images=images, config={"source": str(source), "ptq": ptq, "calib": calib_dir,
                                                          "shape": list(shape) if shape else None},
                            command=command)
