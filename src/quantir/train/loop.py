"""One training stage: optimiser, schedule, EMA, validation, checkpoints, resume, NaN guard, DDP.

Everything a resumed stage needs is in ``<stage>_last.safetensors``: weights, EMA weights, optimiser
state, step, best validation score and RNG states. Batches are a pure function of the step
(``StepSampler``) and the learning rate a pure function of the step, so a run killed at any
point and resumed produces the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from quantir.errors import TrainingError
from quantir.quant import checkpoint
from quantir.train.config import StageConfig
from quantir.train.distributed import DistContext, wrap
from quantir.train.weight_average import WeightAverage
from quantir.utils import atomic_path

log = logging.getLogger(__name__)
METRIC_FIELDS = ("stage", "step", "loss", "terms", "lr", "val_psnr", "elapsed_s")


def fault_point(stage: str, step: int) -> str | None:
    """Fault injection for the crash/resume and NaN tests: QUANTIR_FAULT="kill:stage1:25" sends
    SIGKILL to this process at that step; "nan:qat:5" makes that step's loss NaN."""
    spec = os.environ.get("QUANTIR_FAULT", "")
    for item in filter(None, spec.split(",")):
        kind, at_stage, at_step = item.split(":")
        if at_stage == stage and int(at_step) == step:
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            return kind
    return None


def learning_rate(cfg: StageConfig, step: int) -> float:
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (0.1 + 0.9 * step / cfg.warmup)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return max(cfg.lr * 0.5 ** (step // cfg.step_size), cfg.lr_min)
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * min(1.0, t)))


class MetricsLog:
    """metrics.csv, rewritten atomically so a killed run never leaves a torn or ahead-of-checkpoint file."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if path.is_file():
            with path.open() as f:
                self.rows = list(csv.DictReader(f))

    def truncate(self, stage: str, step: int) -> None:
        self.rows = [r for r in self.rows if r["stage"] != stage or int(r["step"]) <= step]

    def add(self, **row) -> None:
        self.rows.append({k: row.get(k, "") for k in METRIC_FIELDS})

    def flush(self) -> None:
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            w.writeheader()
            w.writerows(self.rows)


@dataclasses.dataclass
class StageSpec:
    """What a stage trains and how; the loop below is shared by teacher, stage 1/2 and QAT."""

    name: str
    cfg: StageConfig
    model: torch.nn.Module
    param_groups: list[dict]
    make_batches: Callable[[int], Iterable[dict]]  # start_step -> iterable of batches
    compute_loss: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
    validate: Callable[[torch.nn.Module], float]
    on_step: Callable[[int], bool] | None = None  # phase changes; True if the trainable set changed
    custom_backward: Callable[[torch.nn.Module, dict], tuple[float, dict]] | None = None
    record: Callable[[torch.nn.Module], dict] | None = None  # extra info stored with the weights


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _clip_weights(model: torch.nn.Module, limit: float) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.clamp_(-limit, limit)


def run_stage(spec: StageSpec, ckpt_dir: Path, metrics: MetricsLog, ctx: DistContext, resume: bool,
              progress: bool = True) -> torch.nn.Module:
    """Train ``spec.model`` in place; return it with the best (averaged) weights by validation PSNR."""
    cfg, model = spec.cfg, spec.model
    last_path = ckpt_dir / f"{spec.name}_last{checkpoint.SUFFIX}"
    best_path = ckpt_dir / f"{spec.name}_best{checkpoint.SUFFIX}"
    optimizer = torch.optim.Adam(spec.param_groups, lr=cfg.lr)
    ema = WeightAverage(model) if cfg.ema > 0 else None
    step, best, started = 0, -math.inf, time.time()
    if resume and last_path.is_file():
        state = checkpoint.load(last_path)
        step, best = state["step"], state["best"]
        if spec.on_step:  # replay phase switches first: leaving "observe" adopts observer ranges,
            for k in range(step):  # which the checkpoint's learned ranges must then overwrite
                spec.on_step(k)
        model.load_state_dict(state["model"], strict=False)
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        metrics.truncate(spec.name, step)
        started -= state.get("elapsed", 0.0)
    else:
        metrics.truncate(spec.name, -1)
    base_lrs = [g.get("lr_mult", 1.0) for g in optimizer.param_groups]

    def save_last():
        if ctx.is_main:
            checkpoint.save({"model": model.state_dict(), "ema": ema.state_dict() if ema else None,
                             "optimizer": optimizer.state_dict(), "step": step, "best": best, "rng": _rng_state(),
                             "elapsed": time.time() - started}, last_path)
            metrics.flush()

    def evaluate_and_keep_best():
        nonlocal best
        if not ctx.is_main:
            return None
        with ema.swapped(model) if ema is not None else contextlib.nullcontext(model) as target:
            score = spec.validate(target)
            if score > best:
                best = score
                record = spec.record(target) if spec.record else {}
                checkpoint.save({"model": target.state_dict(), "step": step, "val_psnr": score, **record}, best_path)
        return score

    train_model = wrap(model, ctx)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=spec.name, unit="step", dynamic_ncols=True, leave=True,
                   disable=None)
    running, running_terms, n_running = 0.0, {}, 0
    model.train()
    for batch in spec.make_batches(step):
        if step >= cfg.steps:
            break
        if spec.on_step and spec.on_step(step):
            train_model = wrap(model, ctx)
        lr = learning_rate(cfg, step)
        for g, mult in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * mult
        optimizer.zero_grad(set_to_none=True)
        fault = fault_point(spec.name, step)
        if spec.custom_backward is not None:
            loss_value, terms = spec.custom_backward(model, batch)
        else:
            loss, terms = spec.compute_loss(train_model, batch)
            if fault == "nan":
                loss = loss * float("nan")
            loss_value = float(loss.detach())
            if ctx.all_true(math.isfinite(loss_value)):
                loss.backward()
        if not ctx.all_true(math.isfinite(loss_value)):
            metrics.flush() if ctx.is_main else None
            raise TrainingError(f"{spec.name}: loss became {loss_value} at step {step}; stopped. The last good "
                                f"checkpoint is {last_path if last_path.exists() else 'none (no step was saved)'}; "
                                "lower the learning rate and resume with --resume")
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        if cfg.weight_clip > 0:
            _clip_weights(model, cfg.weight_clip)
        if ema is not None:
            ema.update(model, WeightAverage.warmup_decay(cfg.ema, step))
        step += 1
        running += loss_value
        n_running += 1
        for k, v in terms.items():
            running_terms[k] = running_terms.get(k, 0.0) + v
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}", best=f"{best:.2f}" if best > -math.inf else "-")
        val = None
        if step % cfg.val_every == 0 or step == cfg.steps:
            val = evaluate_and_keep_best()
            model.train()
            if progress and ctx.is_main and (bar is None or bar.disable):  # no TTY: one line per validation
                log.info("%s step %d/%d  loss %.5g  val PSNR %.3f dB  best %.3f dB  (%.0f s)", spec.name, step,
                         cfg.steps, running / max(n_running, 1), val, best, time.time() - started)
        if val is not None or step % 25 == 0:
            if ctx.is_main:
                terms_txt = ";".join(f"{k}={v / n_running:.5g}" for k, v in running_terms.items())
                metrics.add(stage=spec.name, step=step, loss=f"{running / n_running:.6g}", terms=terms_txt,
                            lr=f"{lr:.3g}", val_psnr="" if val is None else f"{val:.4f}",
                            elapsed_s=f"{time.time() - started:.1f}")
            running, running_terms, n_running = 0.0, {}, 0
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_last()
    if bar is not None:
        bar.close()
    if ema is not None:  # the average is what this stage hands on (unless a best checkpoint replaces it)
        ema.apply(model)
    if step == 0 and cfg.steps == 0:
        return model
    ctx.barrier()
    if best_path.is_file():
        model.load_state_dict(checkpoint.load(best_path)["model"], strict=False)
    return model
