"""``train(config, run_dir)``: photos in, verified INT8 artifacts and a report out.

Stages run in order and each records its output checkpoint in ``state.json``; ``resume=True``
skips finished stages and continues the interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from quantir import config as config_io
from quantir.errors import ConfigError, ModelFileError, TrainingError
from quantir.models import create_model, external, model_config, recalibrate_bn, reparameterize_model
from quantir.models.mobileone_sr import check_composable
from quantir.models.reparam import has_batchnorm
from quantir.quant import checkpoint
from quantir.quant.api import Phase, refresh_weight_qparams, set_phase
from quantir.train.config import TrainConfig
from quantir.train.data import build_splits, calibration_batches
from quantir.train.device import resolve_device
from quantir.train.distributed import DistContext, init_distributed
from quantir.train.loop import MetricsLog, run_stage
from quantir.train.report import finish_run
from quantir.train.stages import Context, cache_teacher, float_stage, qat_stage
from quantir.utils import atomic_write_text, check_writable

log = logging.getLogger(__name__)
CKPT = checkpoint.SUFFIX

STAGE_SALTS = {"teacher": 11, "stage1": 23, "stage2": 37, "qat": 53}


class RunState:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"completed": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["completed"]

    def mark(self, stage: str, info: dict, ctx: DistContext) -> None:
        self.data["completed"][stage] = info
        if ctx.is_main:
            atomic_write_text(self.path, json.dumps(self.data, indent=2))


def _setup(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _check_resume_config(cfg: TrainConfig, run_dir: Path) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise TrainingError(f"{run_dir}: no run to resume here (no config.yaml); drop --resume to start a new one")
    try:  # resolved on both sides: a field added since the run was saved takes its default there too
        old = config_io.to_dict(config_io.load(TrainConfig, saved))
    except ConfigError as err:  # e.g. a key this version no longer has
        raise ConfigError(f"{saved} no longer loads ({err}); start a new run directory") from None
    new = config_io.to_dict(cfg)
    for d in (old, new):  # a run may move between machines (CPU <-> GPU, another GPU count) and go on
        d.pop("device", None)
    if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True, default=str):
        raise ConfigError(f"{saved} differs from the given config; resume with the same config "
                          "(or start a new run directory)")


# What finish_run writes. A fresh run in an old folder removes them first: killed before its own
# results, it would otherwise leave the previous run's numbers beside its new config.yaml, and a
# reader (or a benchmark that reuses finished runs) would take them for this run's. Checkpoints stay:
# --init may point at one of them, and a fresh stage ignores a stale *_last file anyway.
PREVIOUS_OUTPUTS = ("results.json", "report.md", "curves.png", "teacher_cache", "export")


def _remove_previous_outputs(run_dir: Path) -> None:
    for name in PREVIOUS_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _init_model(cfg: TrainConfig, init: str | None):
    model = create_model(cfg.model, **cfg.model_options)
    if (model.info.task, model.info.scale) != (cfg.task, cfg.sr_scale):
        raise ConfigError(f"model {cfg.model!r} is a {model.info.task.value} x{model.info.scale} model, "
                          f"but the config asks for {cfg.task.value} x{cfg.sr_scale}")
    if init is None:
        return model, False
    if not checkpoint.is_checkpoint(init):
        return _init_from_state_dict(cfg, model, Path(init))
    record = checkpoint.load(checkpoint.resolve(init))
    if record.get("kind") != "float":
        raise ConfigError(f"--init needs a float checkpoint (stage1/stage2/deploy), got {record.get('kind')!r}")
    loaded = checkpoint.build_float(record)
    if record["model_name"] != cfg.model:
        raise ConfigError(f"--init checkpoint holds {record['model_name']!r}, the config trains {cfg.model!r}")
    deploy = not has_batchnorm(loaded) and has_batchnorm(model)
    if deploy and (cfg.stage1.enabled or cfg.stage2.enabled):
        raise ConfigError("--init points to a fused (deploy) model: disable stage1 and stage2 to start from QAT")
    return loaded.train(), deploy


def _init_from_state_dict(cfg: TrainConfig, model, path: Path):
    """Weights trained elsewhere: a plain state_dict (.pt/.pth read with weights_only, or .safetensors)
    of the config's model, in its training (multi-branch) form or its fused deploy form."""
    try:
        state = external.load_state_dict(path)
    except ModelFileError as err:
        if path.suffix.lower() not in checkpoint.LEGACY_SUFFIXES:
            raise
        raise ModelFileError(f"{err}; if it is a quantir 0.1 checkpoint and you trust its source, convert it once: "
                             f"quantir convert-checkpoint {path} --trust") from None
    deploy_model = create_model(cfg.model, deploy=True, **cfg.model_options)
    for candidate, deploy in ((model, False), (deploy_model, True)):
        if external.state_mismatch(candidate, state) is None:
            candidate.load_state_dict(state)
            if deploy and (cfg.stage1.enabled or cfg.stage2.enabled):
                raise ConfigError(f"{path}: fused (deploy) weights; disable stage1 and stage2 to start from QAT "
                                  "(as configs/sr_x3_mobileone_qat.yaml does)")
            return candidate.train(), deploy and has_batchnorm(model)
    # neither form: one line naming what differs from the training form
    raise ModelFileError(f"{path} does not fit {type(model).__name__}: {external.state_mismatch(model, state)} "
                         "(nor its fused form)")


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, init: str | None = None,
          progress: bool = True, command: str | None = None) -> dict:
    device = resolve_device(cfg.device)
    ctx_dist = init_distributed(device)
    _setup(cfg)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    # Everything that can be wrong is checked before anything is written: a failed start leaves an
    # existing run resumable and a fresh folder as it was.
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a folder")
    check_writable(run_dir / "config.yaml", what="run")
    if resume:
        _check_resume_config(cfg, run_dir)
    model, init_is_deploy = _init_model(cfg, init)
    if cfg.qat.enabled and cfg.qat.compose_stem:  # before an hour of FP32 stages, not after
        check_composable(model.model_cfg)
    if cfg.teacher.enabled and cfg.task_info.is_sr:  # a typo fails now (no instance: the RNG stays untouched)
        model_config(cfg.teacher.model, scale=cfg.scale, **cfg.teacher.model_options)
    splits = build_splits(cfg, model.info.size_multiple)
    if ctx_dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        config_io.dump(cfg, run_dir / "config.yaml")
    ctx_dist.barrier()
    state = RunState(run_dir / "state.json")
    metrics = MetricsLog(run_dir / "metrics.csv")
    if not resume:  # a fresh run in an old directory starts over
        state.data, metrics.rows = {"completed": {}}, []
        if ctx_dist.is_main:
            _remove_previous_outputs(run_dir)
    timings = state.data.setdefault("timings", {})
    model.to(device)
    ctx = Context(cfg, run_dir, ctx_dist, splits.sources, splits.val, model.info.pixel_max, splits.qat_select)
    if ctx_dist.is_main:
        log.info("data: %d training photos, %d validation crops, %d evaluation photos", len(splits.sources),
                 len(splits.val), len(splits.eval) if splits.eval is not None else 0)
        if splits.qat_select is not None:
            log.info("QAT checkpoints chosen on %d photos of %s", len(splits.qat_select), cfg.qat.select_dir)

    def timed(stage, fn):
        t0 = time.time()
        out = fn()
        timings[stage] = timings.get(stage, 0.0) + time.time() - t0
        return out

    # Teacher: train (or reuse) and cache its outputs on the training images.
    if cfg.teacher.enabled and cfg.task_info.is_sr:  # the teacher distils SR outputs
        teacher = create_model(cfg.teacher.model, scale=cfg.scale, **cfg.teacher.model_options).to(device)
        if state.done("teacher"):
            teacher.load_state_dict(checkpoint.load(ckpt_dir / f"teacher_final{CKPT}")["state_dict"])
        else:
            spec = float_stage(ctx, "teacher", teacher, cfg.teacher.train, STAGE_SALTS["teacher"])
            teacher = timed("teacher", lambda: run_stage(spec, ckpt_dir, metrics, ctx_dist, resume, progress))
            if ctx_dist.is_main:
                checkpoint.save(checkpoint.float_record(teacher), ckpt_dir / f"teacher_final{CKPT}")
            state.mark("teacher", {"checkpoint": f"checkpoints/teacher_final{CKPT}"}, ctx_dist)
        ctx.sources = timed("teacher_cache", lambda: cache_teacher(ctx, teacher))

    for name in ("stage1", "stage2"):
        stage = getattr(cfg, name)
        if not stage.enabled or init_is_deploy:
            continue
        final = ckpt_dir / f"{name}_final{CKPT}"
        if state.done(name):
            model.load_state_dict(checkpoint.load(final)["state_dict"])
            continue
        spec = float_stage(ctx, name, model, stage, STAGE_SALTS[name])
        model = timed(name, lambda spec=spec: run_stage(spec, ckpt_dir, metrics, ctx_dist, resume, progress))
        if ctx_dist.is_main:
            checkpoint.save(checkpoint.float_record(model), final)
        state.mark(name, {"checkpoint": f"checkpoints/{name}_final{CKPT}"}, ctx_dist)
        ctx_dist.barrier()

    # BN recalibration on training patches, then exact fusion to the deploy graph.
    deploy_path = ckpt_dir / f"deploy_fp32{CKPT}"
    if state.done("fuse"):
        deploy = checkpoint.build_float(checkpoint.load(deploy_path)).to(device)
    else:
        model.clamp_output = True
        used = 0
        if has_batchnorm(model) and not init_is_deploy:
            batches = (x.to(device) for x in calibration_batches(cfg, ctx.sources, cfg.bn_recal_batches, ctx.pixel_max))
            used = recalibrate_bn(model, batches, cfg.bn_recal_batches)
        deploy = reparameterize_model(model)
        if ctx_dist.is_main:
            checkpoint.save(checkpoint.float_record(deploy), deploy_path)
        state.mark("fuse", {"checkpoint": f"checkpoints/deploy_fp32{CKPT}", "bn_recal_batches": used}, ctx_dist)
    deploy.eval()

    qmodel = None
    if cfg.qat.enabled:
        qat_path = ckpt_dir / f"qat_final{CKPT}"
        if state.done("qat"):
            qmodel = checkpoint.build_qat(checkpoint.load(qat_path)).to(device)
        else:
            spec, qmodel, example_hw = qat_stage(ctx, deploy, STAGE_SALTS["qat"])
            qmodel = timed("qat", lambda: run_stage(spec, ckpt_dir, metrics, ctx_dist, resume, progress))
            set_phase(qmodel, Phase.FREEZE)
            refresh_weight_qparams(qmodel, (torch.rand(1, 3, *example_hw) * ctx.pixel_max).to(device))
            if ctx_dist.is_main:
                checkpoint.save(checkpoint.qat_record(qmodel, example_hw, deploy), qat_path)
            state.mark("qat", {"checkpoint": f"checkpoints/qat_final{CKPT}"}, ctx_dist)
        qmodel.eval()

    result = {"run_dir": str(run_dir)}
    deploy.cpu()  # export traces and converts on the CPU; evaluation matches the deployed runtimes
    if qmodel is not None:
        qmodel.cpu()
    if ctx_dist.is_main:
        result.update(timed("export_eval", lambda: finish_run(cfg, run_dir, deploy, qmodel, splits, metrics,
                                                              state.data, command, progress)))
        if result.get("export_error"):
            raise ModelFileError(f"INT8 export failed (training and evaluation results are in {run_dir}): "
                                 f"{result['export_error']}")
        state.data["timings"] = timings
        atomic_write_text(run_dir / "state.json", json.dumps(state.data, indent=2))
    ctx_dist.barrier()
    return result

