"""Multi-process training with PyTorch's own engine: DDP under torchrun (gloo on CPU, nccl on GPU).

One process per GPU (``torchrun --nproc_per_node N``); several machines join with torchrun's
rendezvous flags (README, "Train on GPUs"). Each rank reads its own batches (``StepSampler``);
validation, checkpoints and export run on rank 0 only.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from quantir.train.device import process_group_backend


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where this rank's tensors live (NCCL reduces GPU tensors only)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """True only if ``flag`` holds on every rank (used for the NaN check)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)

    def average_(self, tensors: list[torch.Tensor | None]) -> None:
        if not self.enabled:
            return
        for t in tensors:
            if t is not None:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                t.div_(self.world)

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: torch.device = torch.device("cpu")) -> DistContext:
    """Join the process group torchrun describes in the environment; a plain run is world size 1.

    The backend follows the tensors' device, not whether CUDA exists: a CPU run on a GPU machine
    uses gloo (NCCL would refuse its CPU tensors).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=process_group_backend(device))
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP wrapper over the parameters that currently require grad (rebuild it when that set changes)."""
    if not ctx.enabled or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
