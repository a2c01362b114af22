"""Checkpoints that run no code when loaded: tensors in safetensors, everything else as JSON.

A checkpoint is one ``.safetensors`` file. Its tensors are stored by index; the record around
them (model name and options, QuantConfig, example size, optimiser state, RNG states...) is a
JSON tree in the file's metadata under ``quantir``, with each tensor replaced by a reference.
Loading parses JSON and reads raw tensor bytes, so a crafted file can at worst be rejected,
never execute anything (``torch.load`` of a pickle would run whatever the file names).

A model checkpoint stores how to rebuild the module (model name + options, and for QAT the
QuantConfig and example size) next to its state dict, so ``quantir export`` and ``eval`` can
load any checkpoint or run directory without the training config. Checkpoints written by
quantir 0.1's pickle format (``.pt``) are refused with the command that converts them, which
unpickles only when the user says they trust the file.
"""

from __future__ import annotations

import base64
import enum
import json
from pathlib import Path

import numpy as np
import torch

from quantir.config import from_dict, to_dict
from quantir.errors import ModelFileError, OutputError
from quantir.models import create_model, reparameterize_model
from quantir.quant.api import Phase, QuantizedModel, prepare_qat, set_phase
from quantir.quant.config import QuantConfig
from quantir.utils import atomic_path

SUFFIX = ".safetensors"
FORMAT = "quantir-checkpoint/1"
LEGACY_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
FINAL_NAMES = ("qat_final", "deploy_fp32", "stage2_final", "stage1_final")  # run dir -> model, in this order


# -- a JSON tree with tensor references ------------------------------------------------------------

def _encode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        # a private contiguous CPU copy: safetensors refuses shared storage, and GPU runs save device-free
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": key}
    if isinstance(obj, np.ndarray):  # numpy RNG state: small, kept exact as bytes
        return {"$ndarray": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode(),
                "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, enum.Enum):
        return _encode(obj.value, tensors)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {"$dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _decode(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "$tensor" in node:
        return tensors[node["$tensor"]]
    if "$ndarray" in node:
        raw = base64.b64decode(node["$ndarray"])
        return np.frombuffer(raw, dtype=np.dtype(node["dtype"])).reshape(node["shape"]).copy()
    if "$tuple" in node:
        return tuple(_decode(v, tensors) for v in node["$tuple"])
    if "$dict" in node:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in node["$dict"]}
    raise ValueError(f"unknown node {sorted(node)}")


def save(obj: dict, path: str | Path) -> None:
    """Write ``obj`` (dicts, lists, tuples, tensors, numbers, strings) atomically as one safetensors file."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors)
    try:
        with atomic_path(path) as tmp:  # a failed write leaves the previous checkpoint in place
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "quantir": json.dumps(tree)})
    except OSError as err:
        raise OutputError(f"{path}: cannot write the checkpoint ({err.strerror or err})") from None


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint ``save`` wrote (a run directory counts: it holds them).

    Reads only the safetensors header; a plain state_dict, a pickle or any other file is False.
    """
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() != SUFFIX or not path.is_file():
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return False
    return meta.get("format") == FORMAT and "quantir" in meta


def load(path: str | Path) -> dict:
    """Read a checkpoint written by ``save``; any other file gets a one-line ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint not found")
    if path.suffix.lower() in LEGACY_SUFFIXES:
        raise ModelFileError(f"{path}: a pickle checkpoint; loading it could run code hidden in the file, so quantir "
                             f"does not. If you trust its source, convert it once: quantir convert-checkpoint {path} "
                             "--trust")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0][:120]})") from None
    if meta.get("format") != FORMAT or "quantir" not in meta:
        raise ModelFileError(f"{path}: a safetensors file without a quantir record (format "
                             f"{meta.get('format', 'none')!r}); pass weights with --init instead")
    try:
        obj = _decode(json.loads(meta["quantir"]), tensors)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFileError(f"{path}: corrupt checkpoint record ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: corrupt checkpoint record (not a mapping)")
    return obj


def convert_legacy(src: str | Path, dst: str | Path | None = None, trust: bool = False) -> Path:
    """Rewrite a quantir 0.1 pickle checkpoint in the safe format. Unpickling runs code: needs ``trust``."""
    src = Path(src)
    if not trust:
        raise ModelFileError(f"{src}: converting unpickles the file, which runs any code it holds; add --trust "
                             "only if you know where it comes from")
    if not src.is_file():
        raise ModelFileError(f"{src}: checkpoint not found")
    dst = Path(dst) if dst else src.with_suffix(SUFFIX)
    if dst.resolve() == src.resolve():
        raise ModelFileError(f"{dst}: the output would overwrite the input")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ModelFileError(f"{src}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{src}: holds a {type(obj).__name__}, not a checkpoint record")
    try:
        save(obj, dst)
    except TypeError as err:
        raise ModelFileError(f"{src}: {err}") from None
    return dst


# -- model records ---------------------------------------------------------------------------------

def _require(record: dict, keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ModelFileError(f"{what}: checkpoint lacks {', '.join(repr(k) for k in missing)} "
                             "(not a model checkpoint written by quantir?)")


def float_record(model: torch.nn.Module, **extra) -> dict:
    return {"kind": "float", "model_name": model.model_name, "model_cfg": to_dict(model.model_cfg),
            "reparameterized": bool(model.reparameterized), "state_dict": model.state_dict(), **extra}


def qat_record(qmodel: QuantizedModel, example_hw: tuple[int, int], float_model: torch.nn.Module, **extra) -> dict:
    """QAT weights and learned scales, plus the fused FP32 model they came from (export's reference)."""
    return {"kind": "qat", "model_name": qmodel.source_model_name, "model_cfg": to_dict(qmodel.source_model_cfg),
            "quant_config": to_dict(qmodel.config), "example_hw": list(example_hw),
            "state_dict": qmodel.state_dict(), "float": float_record(float_model), **extra}


def _load_state(model: torch.nn.Module, state: dict, what: str, strict: bool = True, ignore=()) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape (another config, or another quantizer numbering)
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise ModelFileError(f"{what}: weights do not match the model ({detail})") from None
    missing = [k for k in missing if not k.endswith(tuple(ignore))]
    if strict and (missing or unexpected):
        first = (missing or unexpected)[0]
        raise ModelFileError(f"{what}: weights do not match the model ({len(missing)} missing, {len(unexpected)} "
                             f"unexpected keys, e.g. {first!r})")


def build_float(record: dict, what: str = "checkpoint") -> torch.nn.Module:
    _require(record, ("model_name", "model_cfg", "state_dict"), what)
    # fused blocks have a different structure: fuse before loading
    model = create_model(record["model_name"], **record["model_cfg"])
    if record.get("reparameterized"):
        model = reparameterize_model(model)
    _load_state(model, record["state_dict"], what)
    return model.eval()


def build_qat(record: dict, what: str = "checkpoint") -> QuantizedModel:
    """Rebuild the frozen fake-quant model of a QAT checkpoint (same graph, same learned scales)."""
    _require(record, ("model_name", "model_cfg", "quant_config", "example_hw", "state_dict"), what)
    options = {k: v for k, v in record["model_cfg"].items() if k != "deploy"}  # deploy: create_model's own argument
    model = create_model(record["model_name"], deploy=True, **options)
    h, w = record["example_hw"]
    saved = dict(record["quant_config"])
    # Written before the anchor residual took the output grid (QuantConfig.residual_on_output_grid):
    # trained with a learned residual range, so rebuilt with one.
    saved.setdefault("residual_on_output_grid", False)
    saved.setdefault("weight_rounding", "nearest")  # written before the rounding rule was a choice
    qcfg = from_dict(QuantConfig, saved)
    qmodel = prepare_qat(model, torch.zeros(2, 3, h, w), qcfg)
    set_phase(qmodel, Phase.FREEZE)  # before loading, so no observer range replaces the learned ones
    _load_state(qmodel, record["state_dict"], what, ignore=(".sample",))
    return qmodel.eval()


def build(record: dict, what: str = "checkpoint") -> torch.nn.Module:
    """The model a checkpoint holds: the frozen fake-quant model of a QAT record, else the float model."""
    return build_qat(record, what) if record.get("kind") == "qat" else build_float(record, what)


def resolve(path: str | Path) -> Path:
    """A run directory resolves to its final QAT checkpoint (or the fused FP32 one without QAT)."""
    path = Path(path)
    if path.is_dir():
        for name in FINAL_NAMES:
            cand = path / "checkpoints" / f"{name}{SUFFIX}"
            if cand.is_file():
                return cand
        legacy = sorted((path / "checkpoints").glob("*.pt")) if (path / "checkpoints").is_dir() else []
        if legacy:
            raise ModelFileError(f"{path}: holds pickle checkpoints of an older quantir ({legacy[0].name}, ...); "
                                 f"convert them with quantir convert-checkpoint FILE --trust")
        raise ModelFileError(f"{path}: no checkpoints/qat_final{SUFFIX} (is this a quantir run directory?)")
    return path
