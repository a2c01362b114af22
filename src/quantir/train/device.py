"""Where training runs: the device a config names, its process-group backend, and bf16 autocast.

``device: auto`` is CUDA when present (``cuda:<LOCAL_RANK>`` under torchrun), else the CPU. The
CPU path is the reference: no autocast, no device copies beyond what the CPU code always did,
so a CPU run computes exactly what it computed before devices existed.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from quantir.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|meta)$")  # meta: placement tests without a GPU


def check_device_spec(spec: str) -> None:
    if not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch device for a config's ``device``; one line when CUDA is asked for but absent."""
    check_device_spec(spec)
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r}: this torch build or machine has no CUDA (torch {torch.__version__}); "
                              "use --device cpu, or install a CUDA build of torch (see README)")
        index = int(spec.split(":")[1]) if ":" in spec else local_rank
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device cuda:{index}: only {torch.cuda.device_count()} GPU(s) visible")
        return torch.device("cuda", index)
    return torch.device(spec)


def process_group_backend(device: torch.device) -> str:
    """NCCL for GPU tensors, gloo for CPU tensors (NCCL cannot reduce CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA for FP32 stages; a no-op elsewhere (the CPU reference stays float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of a batch on ``device`` (non-blocking from pinned memory); other values as they are."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
