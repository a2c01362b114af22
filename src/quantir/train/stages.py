"""The stages of the recipe, each built as a ``StageSpec`` for the shared loop."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from quantir.data.metrics import psnr
from quantir.data.patches import Source
from quantir.data.tiling import tiled_apply
from quantir.models.apply import run_uint8, to_model_units
from quantir.models.mobileone_sr import compose_stem
from quantir.quant import checkpoint
from quantir.quant.api import Phase, QuantizedModel, grid_residual_clipping, prepare_qat, set_phase
from quantir.quant.equalize import equalize_skip
from quantir.quant.odm import cooperative_backward, mismatch_loss
from quantir.quant.weight_start import weight_start
from quantir.train.config import StageConfig, TrainConfig
from quantir.train.data import calibration_batches, patch_loader
from quantir.train.device import autocast, to_device
from quantir.train.distributed import DistContext
from quantir.train.loop import StageSpec
from quantir.train.losses import reconstruction_loss


@dataclasses.dataclass
class Context:
    cfg: TrainConfig
    run_dir: Path
    dist: DistContext
    sources: list[Source]
    val: list
    pixel_max: float
    qat_select: list | None = None  # photos the QAT checkpoints are chosen on (qat.select_dir); None: val

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def device(self) -> torch.device:
        return self.dist.device


def validate_psnr(model: nn.Module, pairs) -> float:
    """Mean RGB PSNR of uint8-rounded outputs on the validation crops (what a deployment would see)."""
    was_training = model.training
    model.eval()
    scores = []
    for pair in pairs:
        scores.append(psnr(run_uint8(model, pair.input), pair.target))
    model.train(was_training)
    return float(np.mean(scores))


def _batches(ctx: Context, stage: StageConfig, salt: int, sources=None):
    d = ctx.cfg.data

    def make(start: int):
        return patch_loader(ctx.cfg, sources or ctx.sources, stage.patch or d.patch, stage.batch or d.batch,
                            stage.steps, start, salt, rank=ctx.dist.rank, world=ctx.dist.world,
                            pin_memory=ctx.device.type == "cuda")

    return make


def _loss_fn(ctx: Context, stage: StageConfig, teacher_model: nn.Module | None = None, amp: bool = False):
    """Reconstruction loss of a batch on the run's device; ``amp``: bf16 autocast (CUDA only, FP32 stages)."""
    pm = ctx.pixel_max

    def compute(model, batch):
        batch = to_device(batch, ctx.device)
        with autocast(ctx.device, amp):
            x = to_model_units(batch["input"], pm)
            pred = model(x) / pm
            target = batch["target"].float() / 255.0
            teacher = None
            if teacher_model is not None:
                with torch.no_grad():
                    teacher = teacher_model(x) / pm
            elif "teacher" in batch:
                teacher = batch["teacher"].float() / 255.0
            return reconstruction_loss(stage.loss, pred.float(), target, None if teacher is None else teacher.float())

    return compute


def float_stage(ctx: Context, name: str, model: nn.Module, stage: StageConfig, salt: int,
                sources=None) -> StageSpec:
    """FP32 training (teacher, stage 1, stage 2)."""
    model.clamp_output = False  # the AIO recipe clamps only for QAT and export
    return StageSpec(
        name=name, cfg=stage, model=model,
        param_groups=[{"params": [p for p in model.parameters() if p.requires_grad]}],
        make_batches=_batches(ctx, stage, salt, sources),
        compute_loss=_loss_fn(ctx, stage, amp=ctx.cfg.amp),
        validate=lambda m: validate_psnr(m, ctx.val),
        record=lambda m: checkpoint.float_record(m),
    )


@torch.no_grad()
def cache_teacher(ctx: Context, teacher: nn.Module) -> list[Source]:
    """Run the teacher once on every full training image; patches then crop its output (disk cache too)."""
    cache_dir = ctx.run_dir / "teacher_cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    teacher.eval()
    out = []
    for src in ctx.sources:
        inp = src.input
        if inp is None:  # synthetic enhancement inputs change per patch: nothing to cache
            out.append(src)
            continue
        path = cache_dir / f"{Path(src.name).stem}.npy"
        if path.is_file():
            pred = np.load(path)
        else:
            pred = tiled_apply(inp, lambda t: run_uint8(teacher, t), scale=ctx.cfg.sr_scale, tile=256, overlap=32)
            if ctx.dist.is_main:
                np.save(path, pred)
        out.append(dataclasses.replace(src, teacher=pred[: src.target.shape[0], : src.target.shape[1]]))
    return out


def qat_stage(ctx: Context, deploy: nn.Module, salt: int) -> tuple[StageSpec, QuantizedModel, tuple[int, int]]:
    """Stage 3: QAT on the fused graph, distilled from the fused FP32 model, optional ODM."""
    cfg, qcfg = ctx.cfg.qat, ctx.cfg.qat.quant
    stage = cfg.train
    multiple = deploy.info.size_multiple
    p = stage.patch or ctx.cfg.data.patch
    p -= p % multiple
    example = torch.rand(2, 3, p, p) * ctx.pixel_max
    qdeploy = deploy.cpu()
    if cfg.compose_stem:  # a composed copy for QAT (train() checked it can be); deploy stays the teacher and the reference
        # The original teaches, not the composed FP32 copy: on 3 seeds each, distilling from the
        # composed copy lost 0.12 dB more on stress (BENCHMARKS.md "Stem composition").
        qdeploy = compose_stem(qdeploy, direct_split=cfg.direct_split)
    if cfg.equalize_skip is not None:  # a rescaled copy for QAT; deploy stays the teacher and reference
        qdeploy = copy.deepcopy(qdeploy)
        equalize_skip(qdeploy, calibration_batches(ctx.cfg, ctx.sources, cfg.calib_batches, ctx.pixel_max),
                      cfg.equalize_skip)
    if cfg.adaround or cfg.bias_correction:  # on a copy too: deploy stays the teacher and reference
        qdeploy = copy.deepcopy(qdeploy) if qdeploy is deploy else qdeploy
        weight_start(qdeploy, calibration_batches(ctx.cfg, ctx.sources, cfg.calib_batches, ctx.pixel_max), qcfg,
                     adaround=cfg.adaround, bias_correction=cfg.bias_correction, seed=ctx.cfg.seed)
    qmodel = prepare_qat(qdeploy, example, qcfg).to(ctx.device)  # torch.export traces on the CPU
    deploy.to(ctx.device)
    # Range initialisation on training patches, identical on every rank.
    qmodel.eval()
    with torch.no_grad(), grid_residual_clipping(qmodel, warn=ctx.dist.is_main):
        for x in calibration_batches(ctx.cfg, ctx.sources, cfg.calib_batches, ctx.pixel_max):
            qmodel(x.to(ctx.device))
    qmodel.train()
    teacher = deploy.eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    freeze_at = int(cfg.freeze_ranges_at * stage.steps)

    def on_step(step: int) -> bool:
        if step == 0:
            set_phase(qmodel, Phase.LEARN)
            return True
        if step == freeze_at:
            set_phase(qmodel, Phase.FREEZE_RANGES)
            return True
        return False

    quant_params = [prm for n, prm in qmodel.named_parameters() if "activation_post_process" in n]
    ids = {id(q) for q in quant_params}
    weights = [prm for prm in qmodel.parameters() if id(prm) not in ids]
    groups = [{"params": weights, "lr_mult": 1.0}, {"params": quant_params, "lr_mult": cfg.quant_lr_mult}]
    compute = _loss_fn(ctx, dataclasses.replace(stage), teacher_model=teacher)
    custom = None
    if qcfg.odm.enabled:
        lam = qcfg.odm.effective_weight(qmodel.info.pixel_max)

        if qcfg.odm.cooperative:
            def custom(model, batch):
                loss_r, terms = compute(model, batch)
                loss_m = mismatch_loss(model)
                named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
                sims = cooperative_backward(named, loss_r, loss_m, lam, granularity=qcfg.odm.granularity,
                                            reduce=ctx.dist.average_)
                terms = dict(terms, mismatch=float(loss_m.detach()), sim=float(np.mean(sims)) if sims else 0.0)
                return float(loss_r.detach()), terms
        else:
            def compute_naive(model, batch, _inner=compute):
                loss_r, terms = _inner(model, batch)
                core = model.module if isinstance(model, DistributedDataParallel) else model
                loss_m = mismatch_loss(core)
                return loss_r + lam * loss_m, dict(terms, mismatch=float(loss_m.detach()))

            compute = compute_naive
    spec = StageSpec(
        name="qat", cfg=stage, model=qmodel, param_groups=groups, make_batches=_batches(ctx, stage, salt),
        compute_loss=compute, validate=lambda m: validate_psnr(m, ctx.qat_select or ctx.val), on_step=on_step,
        custom_backward=custom)
    return spec, qmodel, (p, p)
