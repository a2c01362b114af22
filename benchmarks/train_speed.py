"""Training throughput: steps/s of each stage of a recipe on each device here, and the recipe's wall time.

    python benchmarks/train_speed.py --config configs/sr_x3_mobileone.yaml --steps 10 --json OUT.json

For every stage (teacher, stage1, stage2, qat) the stage's own model, loss, batch and patch size
take ``--warmup`` untimed steps, then ``--steps`` timed ones (forward, backward, optimiser step;
no validation or checkpoints). The full recipe's wall time is extrapolated as the sum of
``steps / (steps/s)`` over its stages. Runs on the CPU and, where present, on one GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from quantir import config as config_io
from quantir.models import create_model, reparameterize_model
from quantir.train.config import TrainConfig
from quantir.train.data import build_splits
from quantir.train.distributed import DistContext
from quantir.train.stages import Context, float_stage, qat_stage


def _rate(spec, warmup: int, steps: int, device: torch.device) -> float:
    optimizer = torch.optim.Adam(spec.param_groups, lr=1e-5)
    batches = iter(spec.make_batches(0))
    spec.model.train()
    t0 = None
    for k in range(warmup + steps):
        if k == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        if spec.on_step:
            spec.on_step(k)
        loss, _ = spec.compute_loss(spec.model, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def measure(cfg: TrainConfig, device: torch.device, warmup: int, steps: int) -> dict:
    splits = build_splits(cfg)
    ctx = Context(cfg, Path("/tmp/quantir-train-speed"), DistContext(device=device), splits.sources, splits.val,
                  pixel_max=255.0)
    rows = {}
    stages = [("teacher", cfg.teacher.train, lambda: create_model(cfg.teacher.model, scale=cfg.scale,
                                                                 **cfg.teacher.model_options))] if cfg.teacher.enabled \
        else []
    stages += [(name, getattr(cfg, name), lambda: create_model(cfg.model, **cfg.model_options))
               for name in ("stage1", "stage2") if getattr(cfg, name).enabled]
    n = warmup + steps
    for name, stage_cfg, build in stages:
        spec = float_stage(ctx, name, build().to(device), dataclasses.replace(stage_cfg, steps=n), salt=1)
        rows[name] = {"steps_per_s": _rate(spec, warmup, steps, device), "recipe_steps": stage_cfg.steps}
    if cfg.qat.enabled:
        deploy = reparameterize_model(create_model(cfg.model, **cfg.model_options)).to(device)
        short = dataclasses.replace(cfg, qat=dataclasses.replace(cfg.qat, train=dataclasses.replace(cfg.qat.train,
                                                                                                  steps=n)))
        spec, _, _ = qat_stage(dataclasses.replace(ctx, cfg=short), deploy, salt=2)
        rows["qat"] = {"steps_per_s": _rate(spec, warmup, steps, device), "recipe_steps": cfg.qat.train.steps}
    total = sum(r["recipe_steps"] / r["steps_per_s"] for r in rows.values())
    return {"device": str(device), "stages": rows, "recipe_hours": total / 3600.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/sr_x3_mobileone.yaml")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=["cpu", "cuda"],
                    help="where to measure (cuda only where present; scripts/gpu_check.sh skips the CPU)")
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = config_io.load(TrainConfig, a.config)
    devices = [torch.device("cpu")] if "cpu" in a.devices else []
    devices += [torch.device("cuda", 0)] if "cuda" in a.devices and torch.cuda.is_available() else []
    if not devices:
        ap.error("no device to measure: CUDA is not available here")
    results = [measure(cfg, d, a.warmup, a.steps) for d in devices]
    print(f"| device | {' | '.join(results[0]['stages'])} | full recipe (extrapolated) |")
    print("|---|" + "---:|" * (len(results[0]["stages"]) + 1))
    for r in results:
        cells = " | ".join(f"{s['steps_per_s']:.2f} steps/s" for s in r["stages"].values())
        print(f"| {r['device']} | {cells} | {r['recipe_hours']:.1f} h |")
    print(f"({a.steps} timed steps after {a.warmup} warm-up per stage, {a.threads} CPU threads; {a.config})")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
