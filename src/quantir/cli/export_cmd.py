"""``quantir export RUN_DIR|CHECKPOINT [--format tflite onnx] [--shape HxW] [--out DIR]``."""

from __future__ import annotations

import shlex
import sys

from quantir.cli.args import int_range
from quantir.errors import ConfigError


def parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"size {text!r} must look like HxW, e.g. 720x1280") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"size {text!r} must be positive")
    return h, w


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write INT8 TFLite/ONNX artifacts, parity report and model card")
    p.add_argument("source", help="run directory or checkpoint (.safetensors)")
    p.add_argument("--format", nargs="+", default=["tflite", "onnx"], choices=["tflite", "onnx"])
    p.add_argument("--shape", help="also write a fixed-shape int8 TFLite for this input size, e.g. 720x1280")
    p.add_argument("--out", help="output folder (default: <run>/export)")
    p.add_argument("--ptq", choices=["minmax", "ema", "percentile", "mse"],
                   help="re-quantize the FP32 weights by post-training calibration instead of using QAT scales")
    p.add_argument("--calib", help="calibration photo folder for --ptq")
    p.add_argument("--parity-data", help="photos for the parity report (default: the run's evaluation photos)")
    p.add_argument("--threads", type=int_range(1, 256), default=2)
    p.set_defaults(func=run)


def run(args) -> int:
    from quantir.export.config import ExportConfig
    from quantir.export.parity import format_parity
    from quantir.train.export_run import export_run

    shape = parse_hw(args.shape) if args.shape else None
    command = "quantir " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    options = ExportConfig(formats=tuple(args.format), shape=shape, threads=args.threads)
    result = export_run(args.source, args.out, options, args.ptq, args.calib, args.parity_data, command=command)
    for name, info in result["files"].items():
        print(f"{name}: {info['path']}")
    if result["parity"]:
        print(format_parity(result["parity"]))
    else:
        print("(no parity photos found: pass --parity-data DIR to check the artifacts against the fake-quant model)")
    print(f"artifacts in {result['dir']}")
    return 0


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert-checkpoint", help="rewrite a pickle (.pt) checkpoint of quantir 0.1 in the safe format")
    p.add_argument("source", help="the old .pt file")
    p.add_argument("--out", help="output file (default: the same name with .safetensors)")
    p.add_argument("--trust", action="store_true",
                   help="required: unpickling runs any code the file holds, so only convert files you trust")
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from quantir.quant.checkpoint import convert_legacy

    print(convert_legacy(args.source, args.out, trust=args.trust))
    return 0
