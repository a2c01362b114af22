"""``quantir quantize MODEL --calib DIR --out DIR``: INT8 artifacts of a network trained anywhere."""

from __future__ import annotations

import shlex
import sys

from quantir.cli.args import int_range


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quantize", help="quantize your own network (PTQ, or QAT by distillation) into INT8 TFLite/ONNX",
        description="MODEL is path/to/file.py:factory or package.module:factory (with --weights), a quantir "
                    "checkpoint or run directory, or any model file spandrel can read (pip install "
                    "'quantir[spandrel]').")
    p.add_argument("model", help="file.py:factory | package.module:factory | quantir checkpoint | model.pth")
    p.add_argument("--weights", help="state_dict for the factory's model (.pt/.pth/.safetensors)")
    p.add_argument("--calib", required=True, help="calibration photos (clean HR photos; never your evaluation set)")
    p.add_argument("--out", required=True, help="output folder for the artifacts")
    p.add_argument("--task", choices=["sr", "enhance"], help="default: from the output size (upscaling -> sr)")
    p.add_argument("--scale", type=int_range(1, 16), help="default: detected from one forward pass")
    p.add_argument("--pixel-max", type=float, choices=[1.0, 255.0],
                   help="the model's pixel range, 0..1 or 0..255 (default: guessed from one forward pass)")
    p.add_argument("--qat", action="store_true", help="after calibration, QAT by distillation from the FP32 model")
    p.add_argument("--train", help="unlabelled photos for --qat (default: the calibration photos)")
    p.add_argument("--steps", type=int_range(0, 10**7), default=300, help="QAT steps (default 300)")
    p.add_argument("--lr", type=float, default=2e-5, help="QAT learning rate (default 2e-5)")
    p.add_argument("--batch", type=int_range(1, 4096), default=4)
    p.add_argument("--crop", type=int_range(8, 4096), default=64, help="input crop size (LR pixels for SR)")
    p.add_argument("--calib-range", choices=["minmax", "ema", "percentile", "mse"], default="mse",
                   help="activation range calibrator (default mse: the range with the least quantization error)")
    p.add_argument("--weight-rounding", choices=["auto", "nearest", "sum_preserving"], default="auto",
                   help="integer weight codes: nearest; sum_preserving: each kernel keeps its float sum, so flat "
                        "regions keep their level (BENCHMARKS.md 'Sum-preserving weight rounding': much better on "
                        "the x3 nets, worse on one user-style net); auto (default): calibrate both and keep the one "
                        "closer to FP32 on held-out crops of the calibration photos (config.yaml says which)")
    p.add_argument("--adaround", action="store_true",
                   help="learn each conv's weight rounding (up or down) on the calibration crops, AdaRound-style; "
                        "a layer keeps the rule's codes where they reconstruct its outputs better")
    p.add_argument("--bias-correction", action="store_true",
                   help="fold each conv's mean output shift from weight rounding into its bias")
    p.add_argument("--allow-float-ops", action="store_true",
                   help="accept ops without an int8 kernel as float islands (listed in parity.json)")
    p.add_argument("--check", action="store_true", help="only report which ops would not be int8, then stop")
    p.add_argument("--format", nargs="+", default=["tflite", "onnx"], choices=["tflite", "onnx"])
    p.add_argument("--parity-data", help="photos for the parity report (default: the calibration photos)")
    p.add_argument("--threads", type=int_range(1, 256), default=2)
    p.set_defaults(func=run)


def run(args) -> int:
    from quantir.export.config import ExportConfig
    from quantir.export.parity import format_parity
    from quantir.quant.observers import RangeMethod
    from quantir.train.quantize_run import QuantizeConfig, check_model, load_any, quantize_model

    model, info = load_any(args.model, args.weights, task=args.task, scale=args.scale, pixel_max=args.pixel_max)
    if args.check:
        problems = check_model(model, info, allow_float_ops=args.allow_float_ops)
        print(f"{info.title}, pixels 0..{info.pixel_max:g}: " +
              ("every op is int8" if not problems else f"{len(problems)} op(s) not int8"))
        for prob in problems:
            print(f"  {prob.kind}: {prob.line()}")
        return 0
    config = QuantizeConfig(
        model=args.model, weights=args.weights, calib=args.calib, mode="qat" if args.qat else "ptq",
        calib_range=RangeMethod(args.calib_range), weight_rounding=args.weight_rounding, crop=args.crop,
        adaround=args.adaround, bias_correction=args.bias_correction,
        train=args.train, steps=args.steps, lr=args.lr,
        batch=args.batch, allow_float_ops=args.allow_float_ops, parity=args.parity_data,
        export=ExportConfig(formats=tuple(args.format), threads=args.threads))
    command = "quantir " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = quantize_model(model, info, config, args.out, command=command)
    for name, f in result["files"].items():
        print(f"{name}: {f['path']}")
    if result["parity"]:
        print(format_parity(result["parity"]))
    print(f"artifacts in {result['dir']}")
    return 0
