"""``quantir export RUN_DIR|CHECKPOINT [--format tflite onnx] [--shape HxW] [--out DIR]``."""

from __future__ import annotations

import shlex
import sys

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
    p.add_argument("source", help="run directory or checkpoint (.pt)")
    p.add_argument("--format", nargs="+", default=["tflite", "onnx"], choices=["tflite", "onnx"])
    p.add_argument("--shape", help="also write a fixed-shape int8 TFLite for this input size, e.g. 720x1280")
    p.add_argument("--out", help="output folder (default: <run>/export)")
    p.add_argument("--ptq", choices=["minmax", "ema", "percentile", "mse"],
                   help="re-quantize the FP32 weights by post-training calibration instead of using QAT scales")
    p.add_argument("--calib", help="calibration photo folder for --ptq")
    p.add_argument("--parity-data", help="photos for the parity report (default: the run's evaluation photos)")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=run)


def run(args) -> int:
    from quantir.export.from_checkpoint import export_checkpoint
    from quantir.export.parity import format_parity

    shape = parse_hw(args.shape) if args.shape else None
    command = "quantir " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = export_checkpoint(args.source, args.out, args.format, shape, args.ptq, args.calib, args.parity_data,
                               threads=args.threads, command=command)
    for name, info in result["files"].items():
        print(f"{name}: {info['path']}")
    if result["parity"]:
        print(format_parity(result["parity"]))
    else:
        print("(no parity photos found: pass --parity-data DIR to check the artifacts against the fake-quant model)")
    print(f"artifacts in {result['dir']}")
    return 0
