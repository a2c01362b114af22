"""``quantize_model``: any restoration network -> fully-integer artifacts (``quantir quantize``).

PTQ calibrates activation ranges on photos with quantir's calibrators. QAT then distils from the
FP32 model on unlabelled photos (the FP32 output is the target: no ground truth needed), with
LSQ+ ranges learned and weight scales following the weights, and exports the scales as learned.
The artifacts, parity report and model card are the ones ``quantir train`` writes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from quantir.data.datasets import image_files
from quantir.data.io import read_image
from quantir.data.resize import downscale

from quantir.config import check_choices
from quantir.data.task import ModelInfo
from quantir.errors import ConfigError, DataError, require
from quantir.export.api import export_artifacts
from quantir.export.config import ExportConfig
from quantir.export.from_checkpoint import parity_inputs
from quantir.models.apply import to_model_units
from quantir.models.protocol import as_restoration_model
from quantir.quant.api import Phase, calibrate, convert, prepare_ptq, prepare_qat, set_phase
from quantir.quant.config import QuantConfig, WeightRounding
from quantir.quant.observers import RangeMethod
from quantir.quant.rewrite import RewrittenModel
from quantir.quant.support import inspect_model
from quantir.quant.weight_start import weight_start

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """What ``quantir quantize`` does; written next to the artifacts as config.yaml."""

    model: str = ""
    weights: str | None = None
    calib: str = ""
    mode: Literal["ptq", "qat"] = "ptq"
    # MSE: the best PTQ calibrator on the user-style nets; percentile clipping of the rare large
    # residual values costs several dB (BENCHMARKS.md, benchmarks/byom_calibrators.py)
    calib_range: RangeMethod = RangeMethod.MSE
    calib_crops: int = 32
    # Integer weight codes (QuantConfig.weight_rounding). Sum-preserving keeps each kernel's response
    # to flat regions: after PTQ it cut the x3 nets' INT8 loss on smooth photos 1.3-7x, but cost a
    # user-style SPAN net 0.4 dB (BENCHMARKS.md "Sum-preserving weight rounding"). "auto" calibrates
    # both and keeps the one closer to the FP32 model on held-out crops (choose_weight_rounding): on
    # all five nets measured it kept the rule that was better (or tied) on the stress photos.
    weight_rounding: Literal[WeightRounding, "auto"] = "auto"
    # Where the weights start on their grid (quant/weight_start.py, on the calibration crops):
    # AdaRound-style learned rounding, and bias correction of the rounding's mean output shift.
    adaround: bool = False
    bias_correction: bool = False
    crop: int = 64  # model-input crop size (LR pixels for SR)
    train: str | None = None  # unlabelled photos for QAT distillation (default: the calibration photos)
    steps: int = 300
    lr: float = 2e-5
    batch: int = 4
    allow_float_ops: bool = False
    parity: str | None = None  # photos for the parity report (default: the calibration photos)
    parity_limit: int = 8
    seed: int = 0
    export: ExportConfig = ExportConfig()

    def __post_init__(self):
        check_choices(self)
        require(self.calib_crops >= 1 and self.steps >= 0 and self.batch >= 1, "calib_crops, batch >= 1; steps >= 0")
        require(self.crop >= 8, "crop must be >= 8 pixels")


def crop_pool(info: ModelInfo, folder, n: int, size: int, seed: int) -> list[torch.Tensor]:
    """``n`` random model-input crops (1x3xSxS, model units), each photo decoded once.

    For SR a clean HR crop of size*scale is cut first and then downscaled (bicubic), so a 12 MP photo
    costs one decode, not one full-image resize per crop.
    """
    files = image_files(folder)
    rng = np.random.default_rng(seed)
    s, m = info.scale, info.size_multiple
    per_photo = [n // len(files) + (k < n % len(files)) for k in range(len(files))]
    crops = []
    for path, count in zip(files, per_photo):
        if not count:
            continue
        img = read_image(path)
        c = min(size * s, img.shape[0], img.shape[1])
        c -= c % (s * m)
        if c < s * m:
            raise DataError(f"{path}: {img.shape[1]}x{img.shape[0]} is too small for {size}-pixel crops")
        for _ in range(count):
            y, x = rng.integers(0, img.shape[0] - c + 1), rng.integers(0, img.shape[1] - c + 1)
            crop = np.ascontiguousarray(img[y:y + c, x:x + c])
            crop = downscale(crop, s) if s > 1 else crop
            crops.append(to_model_units(torch.from_numpy(crop).permute(2, 0, 1)[None], info.pixel_max))
    order = rng.permutation(len(crops))
    return [crops[i] for i in order]


def _batches(pool: list[torch.Tensor], batch: int, seed: int):
    """Endless batches drawn from a pool of crops (same size within a batch: the pool's first size)."""
    rng = np.random.default_rng(seed)
    shape = pool[0].shape
    same = [c for c in pool if c.shape == shape]
    while True:
        yield torch.cat([same[i] for i in rng.integers(0, len(same), batch)])


def _to_uint8(crop: torch.Tensor, info: ModelInfo) -> np.ndarray:
    return np.clip(np.round(crop[0].permute(1, 2, 0).numpy() * (255.0 / info.pixel_max)), 0, 255).astype(np.uint8)


def distill(prepared: nn.Module, teacher: nn.Module, batches, steps: int, lr: float) -> list[float]:
    """QAT by distillation: L1 between the fake-quant student and the FP32 teacher on the same inputs."""
    set_phase(prepared, Phase.LEARN)
    prepared.train()
    teacher.eval()
    opt = torch.optim.Adam([p for p in prepared.parameters() if p.requires_grad], lr=lr)
    losses = []
    bar = tqdm(range(steps), desc="QAT (distillation)", unit="step", leave=False, disable=steps < 10)
    for _ in bar:
        x = next(batches)
        with torch.no_grad():
            target = teacher(x)
        loss = (prepared(x) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(l1=f"{losses[-1]:.4g}")
    set_phase(prepared, Phase.FREEZE)
    return losses


ROUNDING_SELECT_CROPS = 16  # held-out crops that choose the weight rounding (weight_rounding: auto)


def fidelity_psnr(qmodel: nn.Module, crops: list[torch.Tensor], references: list[torch.Tensor],
                  pixel_max: float) -> float:
    """PSNR (dB) of ``qmodel``'s outputs on ``crops`` against ``references`` (the FP32 outputs),
    pooled over all of them."""
    err, count = 0.0, 0
    qmodel.eval()
    with torch.no_grad():
        for x, ref in zip(crops, references):
            diff = (qmodel(x) - ref).double() / pixel_max
            err += float((diff * diff).sum())
            count += diff.numel()
    return float("inf") if err == 0 else 10 * np.log10(count / err)


def choose_weight_rounding(float_model: nn.Module, example: torch.Tensor, qcfg: QuantConfig, prepare,
                           calib: list[torch.Tensor], held_out: list[torch.Tensor]) -> tuple[nn.Module, dict]:
    """Prepare and calibrate the model with each weight-rounding rule on the same crops; keep the one
    whose fake-quant output is closer to the FP32 output on ``held_out`` crops (never the calibration
    crops). Sum-preserving must be strictly better to be chosen. Returns (prepared, scores in dB)."""
    with torch.no_grad():
        references = [float_model(x) for x in held_out]  # once, for both rules
    scores, prepared = {}, {}
    for rule in ("nearest", "sum_preserving"):
        prepared[rule] = prepare(float_model, example, dataclasses.replace(qcfg, weight_rounding=rule))
        calibrate(prepared[rule], calib)
        scores[rule] = fidelity_psnr(prepared[rule], held_out, references, float_model.info.pixel_max)
    chosen = "sum_preserving" if scores["sum_preserving"] > scores["nearest"] else "nearest"
    log.info("weight rounding (auto): %s; fake-quant vs FP32 on %d held-out crops: nearest %.3f dB, "
             "sum_preserving %.3f dB", chosen, len(held_out), scores["nearest"], scores["sum_preserving"])
    return prepared[chosen], {"chosen": chosen, **scores}


def _with_weight_start(prepare, calib: list[torch.Tensor], config: QuantizeConfig):
    """``prepare`` applied to a copy of the model whose weights start where quant/weight_start.py puts
    them for the rule being prepared (so ``auto`` compares each rule with its own start)."""
    def prepare_started(float_model: nn.Module, example: torch.Tensor, qcfg: QuantConfig):
        started = copy.deepcopy(float_model)
        weight_start(started, calib, qcfg, adaround=config.adaround, bias_correction=config.bias_correction,
                     seed=config.seed)
        return prepare(started, example, qcfg)
    return prepare_started


def quantize_model(model: nn.Module, info: ModelInfo | None, config: QuantizeConfig, out_dir: str | Path,
                   command: str | None = None) -> dict:
    """PTQ or QAT-by-distillation of ``model``, then every artifact of ``quantir train`` in ``out_dir``."""
    for what, folder in (("calibration", config.calib), ("training", config.train), ("parity", config.parity)):
        if folder and not Path(folder).is_dir():
            raise DataError(f"{folder}: {what} photo folder not found")
    if not config.calib:
        raise ConfigError("quantize needs calibration photos (--calib DIR), never your evaluation photos")
    torch.manual_seed(config.seed)
    float_model = as_restoration_model(model.eval(), info)
    info = float_model.info
    example = _example(info)
    float_model, problems = inspect_model(float_model, example, allow_float_ops=config.allow_float_ops)
    for prob in problems:
        log.warning("not int8: %s", prob.line())
    if isinstance(float_model, RewrittenModel):
        for line in float_model.rewrites.done:
            log.info("rewrite: %s", line)
    auto = config.weight_rounding == "auto"
    qcfg = QuantConfig(act_range=config.calib_range, learn_act_ranges=config.mode == "qat",
                       allow_float_ops=config.allow_float_ops,
                       weight_rounding="nearest" if auto else config.weight_rounding)
    prepare = prepare_qat if config.mode == "qat" else prepare_ptq
    calib = crop_pool(info, config.calib, config.calib_crops, config.crop, config.seed)
    if config.adaround or config.bias_correction:  # each rule gets its own start, on a copy of the model
        prepare = _with_weight_start(prepare, calib, config)
    rounding = None
    if auto:  # chosen on other crops of the calibration photos; the written config says which rule
        held_out = crop_pool(info, config.calib, ROUNDING_SELECT_CROPS, config.crop, config.seed + 4)
        prepared, rounding = choose_weight_rounding(float_model, example, qcfg, prepare, calib, held_out)
        config = dataclasses.replace(config, weight_rounding=rounding["chosen"])
    else:
        prepared = prepare(float_model, example, qcfg)
        calibrate(prepared, calib)
    log.info("calibrated on %d crops of %s", len(calib), config.calib)
    losses = []
    if config.mode == "qat" and config.steps:
        pool = crop_pool(info, config.train or config.calib, max(64, 4 * config.batch), config.crop, config.seed + 1)
        losses = distill(prepared, float_model, _batches(pool, config.batch, config.seed + 2), config.steps, config.lr)
        log.info("QAT: %d distillation steps, L1 to FP32 %.4g -> %.4g", len(losses), losses[0], losses[-1])
    converted = convert(prepared, example[:1])
    if config.parity:
        images = parity_inputs(info, config.parity, config.parity_limit)
    else:  # crops of the calibration photos: parity checks bit-exactness, any content does
        images = [_to_uint8(c, info) for c in crop_pool(info, config.calib, config.parity_limit, 96, config.seed + 3)]
    result = export_artifacts(converted, float_model.eval(), out_dir, config.export, parity_images=images,
                              config=config, command=command, reference=prepared)
    return dict(result, problems=problems, losses=losses, info=info, weight_rounding=rounding)


def load_any(spec: str, weights: str | None = None, task: str | None = None, scale: int | None = None,
             pixel_max: float | None = None) -> tuple[nn.Module, ModelInfo]:
    """The network ``spec`` names and what it computes (see ``quantir quantize --help``)."""
    from quantir.models import external
    from quantir.quant import checkpoint

    if external.is_factory_spec(spec):
        model = external.load_factory(spec)
        if weights:
            external.load_weights(model, weights)
        else:
            log.warning("no --weights: quantizing %s with its initial weights", spec)
        return model, external.detect_info(model, task, scale, pixel_max)
    if weights:
        raise ConfigError("--weights goes with a file.py:factory or package.module:factory model")
    path = Path(spec)
    if path.is_dir() or (path.suffix == checkpoint.SUFFIX and _is_quantir_checkpoint(path)):
        record = checkpoint.load(checkpoint.resolve(path))
        model = checkpoint.build_float(record.get("float", record), what=spec)
        return model, model.info
    if not path.is_file():
        raise ConfigError(f"{spec}: no such file, directory or factory (file.py:factory, package.module:factory)")
    model, info = external.load_spandrel(path)
    if pixel_max not in (None, info.pixel_max):
        raise ConfigError(f"spandrel models take 0..1 pixels; --pixel-max {pixel_max:g} does not apply")
    if scale not in (None, info.scale):
        raise ConfigError(f"--scale {scale} given, but {spec} upscales x{info.scale}")
    return model, info


def _is_quantir_checkpoint(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return "quantir" in (f.metadata() or {})
    except Exception:  # not a safetensors file at all: let spandrel say what it is
        return False


def check_model(model: nn.Module, info: ModelInfo, allow_float_ops: bool = True) -> list:
    """The op report alone (no calibration): ops that will not be int8 kernels; raises on unexportable ones."""
    _, problems = inspect_model(as_restoration_model(model.eval(), info), _example(info), allow_float_ops=allow_float_ops)
    return problems


def _example(info: ModelInfo) -> torch.Tensor:
    """A random example input for export: 2x3xPxP, P a multiple of the model's size multiple."""
    p = max(16, 32 - 32 % info.size_multiple)
    return torch.rand(2, 3, p, p) * info.pixel_max
