"""TFLite artifacts from a converted quantir model, via litert-torch (no TensorFlow).

The int8 graph is converted once at a static reference size, its depth-to-space chains are
replaced by native DEPTH_TO_SPACE ops, and (for the dynamic artifact) every activation's H/W
is marked dynamic. litert-torch cannot convert the dynamic graph directly: its reshape lowering
needs concrete sizes (docs/toolchain.md section 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from quantir.errors import ModelFileError
from quantir.export import tflite_graph as tg
from quantir.models.layers import NHWC
from quantir.models.protocol import RestorationModel
from quantir.utils import atomic_write_bytes, silence_stderr

METADATA_NAME = "quantir"


def _litert():
    import logging
    import warnings

    with silence_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import litert_torch
        from litert_torch import progress
        from litert_torch.quantize.quant_config import QuantConfig

    progress.console.quiet = True
    logging.getLogger("litert_torch").setLevel(logging.ERROR)
    return litert_torch, QuantConfig


def _convert(module: nn.Module, example_nhwc: torch.Tensor, quantizer=None) -> bytes:
    litert_torch, QuantConfig = _litert()
    kwargs = {"quant_config": QuantConfig(pt2e_quantizer=quantizer)} if quantizer is not None else {}
    with silence_stderr():
        model = litert_torch.convert(module, (example_nhwc,), **kwargs)
    return bytes(model.model_content())


def add_metadata(model: tg.fb.ModelT, meta: dict) -> None:
    buf = tg.fb.BufferT()
    buf.data = list(json.dumps(meta, sort_keys=True).encode())
    model.buffers.append(buf)
    entry = tg.fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    model.metadata.append(entry)


FALLBACK_SIZE = (256, 256)  # static size when a graph cannot be made dynamic (runtimes tile larger images)


class _StaticOnly(Exception):
    """The graph cannot be made dynamic (e.g. resizes with baked output sizes)."""


def _finish(raw: bytes, meta: dict, dynamic: bool, path: Path, native_d2s: bool = True) -> dict:
    model = tg.read(raw)
    n_d2s = tg.replace_depth_to_space(model) if native_d2s else 0
    if dynamic:
        try:
            tg.make_dynamic_hw(model)
        except ValueError as err:
            raise _StaticOnly(str(err)) from err  # before anything is written
    add_metadata(model, meta)
    atomic_write_bytes(path, tg.to_bytes(model))
    return {"path": str(path), "depth_to_space_ops": n_d2s, "dynamic": dynamic, "note": None}


def _write(module: nn.Module, hw: tuple[int, int], pixel_max: float, meta: dict, path: Path, dynamic: bool,
           quantizer=None, native_d2s: bool = True) -> dict:
    """Convert at ``hw`` and write; a graph that cannot be dynamic is written static at FALLBACK_SIZE."""
    raw = _convert(module, torch.rand(1, *hw, 3) * pixel_max, quantizer)
    try:
        return _finish(raw, meta, dynamic, path, native_d2s)
    except _StaticOnly as err:  # e.g. the paper U-Net's size-baked resizes: a static file, with a note
        raw = _convert(module, torch.rand(1, *FALLBACK_SIZE, 3) * pixel_max, quantizer)
        return dict(_finish(raw, meta, False, path, native_d2s), note=str(err))


def reference_size(multiple: int, hw: tuple[int, int] | None) -> tuple[int, int]:
    if hw is None:
        return 64, 64
    h, w = hw
    if h % multiple or w % multiple:
        raise ModelFileError(f"--shape {h}x{w} must be a multiple of {multiple} for this model")
    return h, w


def export_int8(converted, path: str | Path, meta: dict, shape: tuple[int, int] | None = None,
                native_d2s: bool = True) -> dict:
    """Write the fully-integer TFLite of a converted ``QuantizedModel`` (dynamic H/W unless ``shape``).

    ``native_d2s=False`` keeps litert-torch's reshape/transpose chain (only possible at a fixed shape);
    the benchmark uses it to measure what the single DEPTH_TO_SPACE op saves.
    """
    hw = reference_size(converted.info.size_multiple, shape)
    return _write(converted.export_graph, hw, converted.info.pixel_max, meta, Path(path),
                  dynamic=shape is None and native_d2s, quantizer=converted.quantizer, native_d2s=native_d2s)


def export_float(model: RestorationModel, path: str | Path, meta: dict, shape: tuple[int, int] | None = None) -> dict:
    """Write the FP32 TFLite of a (fused) float model, same I/O layout as the int8 one."""
    core = NHWC(model.export_module()).eval()
    hw = reference_size(model.info.size_multiple, shape)
    return _write(core, hw, model.info.pixel_max, meta, Path(path), dynamic=shape is None)
