"""``quantir train CONFIG --out RUN_DIR [--resume] [--init CKPT] [--set key=value ...]``."""

from __future__ import annotations

import shlex
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train, quantize (QAT), export and evaluate a model from a YAML config")
    p.add_argument("config", help="YAML preset (e.g. configs/sr_x3_mobileone_quick.yaml); it overrides code defaults")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.csv, export/, report.md)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--init", help="start from this checkpoint, or a plain state_dict (.pt/.pth/.safetensors) of the "
                   "config's model in training or fused form (fused: QAT directly)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set qat.train.steps=100 (repeatable)")
    p.add_argument("--device", help="auto (CUDA when present, the default) | cpu | cuda | cuda:N; same as --set device=...")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from quantir import config as config_io
    from quantir.train.config import TrainConfig
    from quantir.train.pipeline import train

    overrides = config_io.parse_overrides(args.overrides)
    if args.device:
        overrides["device"] = args.device
    cfg = config_io.load(TrainConfig, args.config, overrides)
    command = "quantir " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[0].endswith("quantir") else None
    train(cfg, args.out, resume=args.resume, init=args.init, progress=not args.quiet, command=command)
    return 0
