"""``export_artifacts``: every deployable file of a trained model, plus proof that it matches training."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from quantir.config import to_dict
from quantir.export import onnx as onnx_export
from quantir.export import tflite as tflite_export
from quantir.export import tflite_graph as tg
from quantir.export.parity import format_parity, parity_report
from quantir.export.runtime import load_runtime
from quantir.models.stats import count_params, macs_per_pixel
from quantir.quant.api import QuantizedModel, convert
from quantir.utils import atomic_write_text

FORMATS = ("tflite", "onnx")


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = FORMATS
    shape: tuple[int, int] | None = None  # also write a fixed-shape int8 TFLite at this input size
    threads: int = 2

    def __post_init__(self):
        from quantir.config import require

        require(all(f in FORMATS for f in self.formats), f"formats must be among {', '.join(FORMATS)}")


def _meta(info, float_model) -> dict:
    return {"task": info.task, "scale": info.scale, "pixel_max": info.pixel_max, "size_multiple": info.size_multiple,
            "macs_per_pixel": macs_per_pixel(float_model), "params": count_params(float_model), "producer": "quantir"}


def tflite_op_check(path: str | Path) -> tuple[bool, list[str], str, list[dict]]:
    model = tg.read(Path(path).read_bytes())
    ops = tg.op_table(model)
    bad = sorted({r["op"] for r in ops if any(t != "int8" for t in r["inputs"] + r["outputs"])})
    io = tg.io_details(model)
    io_dtype = f"{io['inputs'][0]['dtype']} -> {io['outputs'][0]['dtype']}"
    return not bad, bad, io_dtype, ops


def export_artifacts(prepared: QuantizedModel, float_model: torch.nn.Module, out_dir: str | Path,
                     options: ExportOptions = ExportOptions(), parity_images: list[np.ndarray] | None = None,
                     config: dict | None = None, command: str | None = None) -> dict:
    """Write int8 TFLite (dynamic and optional fixed shape), FP32 TFLite, int8 ONNX, parity and card.

    ``prepared`` must be frozen (its scales are exported as they are: no re-calibration).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info, meta = prepared.info, _meta(prepared.info, float_model)
    prepared.eval()
    converted = convert(prepared)
    files, runtimes, checks = {}, {}, {}
    if "tflite" in options.formats:
        files["tflite_int8"] = tflite_export.export_int8(converted, out / "model_int8.tflite", meta)
        if options.shape:
            h, w = options.shape
            files["tflite_int8_fixed"] = tflite_export.export_int8(converted, out / f"model_int8_{h}x{w}.tflite", meta,
                                                                   shape=options.shape)
        files["tflite_float"] = tflite_export.export_float(float_model, out / "model_float.tflite", meta)
        if files["tflite_int8"]["note"]:
            print(f"note: model_int8.tflite has a fixed shape: {files['tflite_int8']['note']}")
        ok, bad, io_dtype, ops = tflite_op_check(out / "model_int8.tflite")
        checks["tflite"] = (ok, bad, io_dtype)
        runtimes["tflite"] = load_runtime(out / "model_int8.tflite", threads=options.threads)
    if "onnx" in options.formats:
        io = {"input_scale": info.io_scale, "input_zero_point": -128, "output_scale": info.io_scale,
              "output_zero_point": -128}
        files["onnx_int8"] = onnx_export.export_int8(prepared, out / "model_int8.onnx", meta, io)
        ok, bad = onnx_export.qdq_report(out / "model_int8.onnx")
        checks["onnx"] = (ok, bad, "int8 -> int8")
        runtimes["onnx"] = load_runtime(out / "model_int8.onnx", threads=options.threads)
    report = {}
    if parity_images:
        report = parity_report(runtimes, prepared, float_model, parity_images, checks)
        atomic_write_text(out / "parity.json", json.dumps(report, indent=2) + "\n")
    if config is not None:
        import yaml

        atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
    notes = [f"{k}: fixed input shape ({v['note']})" for k, v in files.items() if v.get("note")]
    card = model_card(prepared, float_model, out, report, command, notes)
    atomic_write_text(out / "model_card.md", card)
    return {"files": files, "parity": report, "dir": str(out)}


def model_card(prepared: QuantizedModel, float_model, out: Path, report: dict, command: str | None,
               notes: list[str] | None = None) -> str:
    info = prepared.info
    name = getattr(prepared, "source_model_name", None) or type(float_model).__name__
    lines = [f"# {name} ({'x%d super-resolution' % info.scale if info.task == 'sr' else 'photo enhancement'})", ""]
    lines.append(f"- parameters (deploy graph): {count_params(float_model):,}")
    mpp = macs_per_pixel(float_model)
    lines.append(f"- MACs per input pixel: {mpp:,.0f} ({mpp * 360 * 640 / 1e9:.2f} GMAC at 360x640 input)")
    lines.append(f"- input/output: int8 NHWC RGB, scale {info.io_scale:.6g}, zero point -128 "
                 f"(pixel value p in 0..255 is stored as p - 128: lossless)")
    if info.size_multiple > 1:
        lines.append(f"- height and width must be multiples of {info.size_multiple} (runtimes pad and crop)")
    cfg = prepared.config
    lines.append(f"- quantization: weights int{cfg.weight_bits} per-{'channel' if cfg.weight_per_channel else 'tensor'} "
                 f"symmetric, activations int{cfg.act_bits} per-tensor affine, scales learned in QAT and exported as is")
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
        lines += ["", "TFLite int8 ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))]
    if report:
        lines += ["", "## Parity with the fake-quant model", "", format_parity(report)]
    if command:
        lines += ["", "## Reproduce", "", "```", command, "```"]
    return "\n".join(lines) + "\n"
