"""``export_artifacts``: every deployable file of a trained model, plus proof that it matches training."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from quantir.config import dump_text
from quantir.errors import ConfigError
from quantir.export import onnx as onnx_export
from quantir.export import tflite as tflite_export
from quantir.export import tflite_graph as tg
from quantir.export.config import ExportConfig
from quantir.export.parity import ParityReport, format_parity, parity_report
from quantir.export.runtime import load_runtime
from quantir.models.protocol import as_restoration_model
from quantir.models.stats import count_params, macs_per_pixel
from quantir.numerics import IO_ZERO_POINT
from quantir.quant.api import QuantizedModel
from quantir.quant.rewrite import RewrittenModel
from quantir.utils import atomic_write_text

log = logging.getLogger(__name__)


def artifact_metadata(info, float_model) -> dict:
    """The ``quantir`` record every artifact carries (what a runtime needs to feed it, and its cost)."""
    return {"task": info.task.value, "scale": info.scale, "pixel_max": info.pixel_max, "size_multiple": info.size_multiple,
            "macs_per_pixel": macs_per_pixel(float_model), "params": count_params(float_model), "producer": "quantir"}


def tflite_op_check(path: str | Path) -> tuple[bool, list[str], str, list[dict]]:
    model = tg.read(Path(path).read_bytes())
    ops = tg.op_table(model)
    bad = sorted({r["op"] for r in ops if any(t != "int8" for t in r["inputs"] + r["outputs"])})
    io = tg.io_details(model)
    io_dtype = f"{io['inputs'][0]['dtype']} -> {io['outputs'][0]['dtype']}"
    return not bad, bad, io_dtype, ops


def export_artifacts(converted: QuantizedModel, float_model: torch.nn.Module, out_dir: str | Path,
                     options: ExportConfig = ExportConfig(), parity_images: list[np.ndarray] | None = None,
                     config=None, command: str | None = None, reference: torch.nn.Module | None = None) -> dict:
    """Write int8 TFLite (dynamic and optional fixed shape), FP32 TFLite, int8 ONNX, parity and card.

    ``converted`` is what ``quant.api.convert`` returned: every artifact is lowered from its
    graphs. The parity report compares the artifacts with ``reference``, the fake-quant model
    that trained (default: ``converted``, which computes the same outputs bit for bit).
    ``config`` (a dataclass) is written next to the artifacts as config.yaml.
    """
    if not converted.converted:
        raise ConfigError("export_artifacts takes the converted model: pass convert(prepared)")
    float_model = as_restoration_model(float_model, converted.info)  # a user's plain module too
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info, meta = converted.info, artifact_metadata(converted.info, float_model)
    files, runtimes, checks = {}, {}, {}
    if "tflite" in options.formats:
        files["tflite_int8"] = tflite_export.export_int8(converted, out / "model_int8.tflite", meta)
        if options.shape:
            h, w = options.shape
            files["tflite_int8_fixed"] = tflite_export.export_int8(converted, out / f"model_int8_{h}x{w}.tflite", meta,
                                                                   shape=options.shape)
        files["tflite_float"] = tflite_export.export_float(float_model, out / "model_float.tflite", meta)
        if files["tflite_int8"]["note"]:
            log.warning("model_int8.tflite has a fixed shape: %s", files["tflite_int8"]["note"])
        ok, bad, io_dtype, ops = tflite_op_check(out / "model_int8.tflite")
        float_counts = Counter(r["op"] for r in ops if any(t != "int8" for t in r["inputs"] + r["outputs"]))
        checks["tflite"] = (ok, bad, io_dtype, float_counts)
        runtimes["tflite"] = load_runtime(out / "model_int8.tflite", threads=options.threads)
    if "onnx" in options.formats:
        io = {"input_scale": info.io_scale, "input_zero_point": IO_ZERO_POINT, "output_scale": info.io_scale,
              "output_zero_point": IO_ZERO_POINT}
        files["onnx_int8"] = onnx_export.export_int8(converted, out / "model_int8.onnx", meta, io)
        ok, bad = onnx_export.qdq_report(out / "model_int8.onnx")
        checks["onnx"] = (ok, bad, "int8 -> int8")
        runtimes["onnx"] = load_runtime(out / "model_int8.onnx", threads=options.threads)
    report = None
    if parity_images:
        report = parity_report(runtimes, reference or converted, float_model, parity_images, checks)
        atomic_write_text(out / "parity.json", json.dumps(report.to_dict(), indent=2) + "\n")
    if config is not None:
        atomic_write_text(out / "config.yaml", dump_text(config))
    notes = [f"{k}: fixed input shape ({v['note']})" for k, v in files.items() if v.get("note")]
    card = model_card(converted, float_model, out, report, command, notes)
    atomic_write_text(out / "model_card.md", card)
    return {"files": files, "parity": report, "dir": str(out)}


def model_card(converted: QuantizedModel, float_model, out: Path, report: ParityReport | None, command: str | None,
               notes: list[str] | None = None) -> str:
    info = converted.info
    name = converted.source_model_name or type(float_model).__name__
    lines = [f"# {name} ({info.title})", ""]
    lines.append(f"- parameters (deploy graph): {count_params(float_model):,}")
    mpp = macs_per_pixel(float_model)
    lines.append(f"- MACs per input pixel: {mpp:,.0f} ({mpp * 360 * 640 / 1e9:.2f} GMAC at 360x640 input)")
    lines.append(f"- input/output: int8 NHWC RGB, scale {info.io_scale:.6g}, zero point {IO_ZERO_POINT} "
                 f"(pixel value p in 0..255 is stored as p - 128: lossless)")
    if info.size_multiple > 1:
        lines.append(f"- height and width must be multiples of {info.size_multiple} (runtimes pad and crop)")
    cfg = converted.config
    ranges = "scales learned in QAT" if cfg.learn_act_ranges else f"ranges calibrated ({cfg.act_range.value})"
    lines.append(f"- quantization: weights int{cfg.weight_bits} per-{'channel' if cfg.weight_per_channel else 'tensor'} "
                 f"symmetric, activations int{cfg.act_bits} per-tensor affine, {ranges} and exported as is")
    if isinstance(float_model, RewrittenModel) and float_model.rewrites.done:  # a user's network
        lines.append("- rewritten for the integer path (same function; the FP32 reference is the rewritten graph):")
        lines += [f"  - {line}" for line in float_model.rewrites.done]
    lines += [f"- note: {n}" for n in notes or []]
    lines.append("")
    lines.append("| file | bytes |")
    lines.append("|---|---:|")
    for p in sorted(out.glob("model*")):
        if p.suffix in (".tflite", ".onnx"):
            lines.append(f"| {p.name} | {p.stat().st_size:,} |")
    tfl = out / "model_int8.tflite"
    if tfl.exists():
        ops = Counter(r["op"] for r in tg.op_table(tg.read(tfl.read_bytes())))
        lines += ["", "TFLite ops (model_int8.tflite): " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))]
    if report:
        lines += ["", "## Parity with the fake-quant model", "", format_parity(report)]
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
