"""Checkpoints: atomic writes, and rebuilding models (float or QAT) from them.

A model checkpoint stores how to rebuild the module (model name + options, and for QAT the
QuantConfig and example size) next to its state dict, so ``quantir export`` and ``eval`` can
load any checkpoint or run directory without the training config.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from quantir.config import to_dict
from quantir.errors import ModelFileError
from quantir.utils import atomic_write_bytes


def save(obj: dict, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ModelFileError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None


def float_record(model: torch.nn.Module, **extra) -> dict:
    return {"kind": "float", "model_name": model.model_name, "model_cfg": to_dict(model.model_cfg),
            "reparameterized": bool(getattr(model, "reparameterized", False)),
            "state_dict": model.state_dict(), **extra}


def qat_record(qmodel, example_hw: tuple[int, int], float_model: torch.nn.Module, **extra) -> dict:
    """QAT weights and learned scales, plus the fused FP32 model they came from (export's reference)."""
    return {"kind": "qat", "model_name": qmodel.source_model_name, "model_cfg": to_dict(qmodel.source_model_cfg),
            "quant_config": to_dict(qmodel.config), "example_hw": list(example_hw),
            "state_dict": qmodel.state_dict(), "float": float_record(float_model), **extra}


def build_float(record: dict) -> torch.nn.Module:
    from quantir.models import create_model, reparameterize_model

    model = create_model(record["model_name"], **record["model_cfg"])
    if record.get("reparameterized"):  # fused blocks have a different structure: fuse before loading
        model = reparameterize_model(model)
    model.load_state_dict(record["state_dict"])
    return model.eval()


def build_qat(record: dict):
    """Rebuild the frozen fake-quant model of a QAT checkpoint (same graph, same learned scales)."""
    from quantir.config import from_dict
    from quantir.models import create_model
    from quantir.quant.api import prepare_qat, set_phase
    from quantir.quant.config import QuantConfig

    cfg = dict(record["model_cfg"])
    if "deploy" in cfg:
        cfg["deploy"] = True
    model = create_model(record["model_name"], **cfg)
    h, w = record["example_hw"]
    qcfg = from_dict(QuantConfig, record["quant_config"])
    qmodel = prepare_qat(model, torch.zeros(2, 3, h, w), qcfg)
    set_phase(qmodel, "freeze")  # before loading, so no observer range replaces the learned ones
    missing, unexpected = qmodel.load_state_dict(record["state_dict"], strict=False)
    real_missing = [k for k in missing if not k.endswith(".sample")]
    if real_missing or unexpected:
        raise ModelFileError(f"checkpoint does not match the rebuilt QAT graph ({len(real_missing)} missing, "
                             f"{len(unexpected)} unexpected keys)")
    return qmodel.eval()


def resolve(path: str | Path) -> Path:
    """A run directory resolves to its final QAT checkpoint (or the fused FP32 one without QAT)."""
    path = Path(path)
    if path.is_dir():
        for name in ("qat_final.pt", "deploy_fp32.pt", "stage2_final.pt", "stage1_final.pt"):
            cand = path / "checkpoints" / name
            if cand.is_file():
                return cand
        raise ModelFileError(f"{path}: no checkpoints/qat_final.pt (is this a quantir run directory?)")
    return path


class TorchPredictor:
    """uint8 -> uint8 predictor over a float or fake-quant checkpoint (for ``quantir eval``)."""

    backend = "torch"

    def __init__(self, model, info):
        self.model, self.info = model, info
        self.task, self.scale = info.task, info.scale

    def check(self, task=None, scale=None):
        if task is not None and task != self.task:
            raise ModelFileError(f"checkpoint is a {self.task!r} model, not {task!r}")
        if scale is not None and task == "sr" and scale != self.scale:
            raise ModelFileError(f"checkpoint upscales x{self.scale}, not x{scale}")

    def run(self, img):
        import numpy as np

        from quantir.export.parity import torch_uint8

        return np.clip(np.round(torch_uint8(self.model, img)), 0, 255).astype(np.uint8)


def load_torch_predictor(path: str | Path) -> TorchPredictor:
    record = load(resolve(path))
    model = build_qat(record) if record.get("kind") == "qat" else build_float(record)
    return TorchPredictor(model, model.info)

