"""``quantir bench MODEL... --hw 360x640 --threads 2 [--psnr DB] [--json OUT]``."""

from __future__ import annotations

from quantir.cli.args import int_range


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency (median/min ms), GMAC/s and MAI score of .tflite/.onnx/checkpoints")
    p.add_argument("models", nargs="+", metavar="MODEL", help="timed round-robin, so noise hits all alike")
    p.add_argument("--hw", default="360x640", help="input size HxW (default 360x640, MAI 2021 timing size)")
    p.add_argument("--threads", type=int_range(1, 256), default=2)
    p.add_argument("--runs", type=int_range(1), default=20)
    p.add_argument("--warmup", type=int_range(0), default=3)
    p.add_argument("--psnr", type=float, action="append",
                   help="PSNR (dB) of each model, in order, for the MAI score 2^(2*PSNR)/(1.16e16*ms)")
    p.add_argument("--json", help="write the rows here")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from quantir.cli.export_cmd import parse_hw
    from quantir.errors import ConfigError
    from quantir.evaluate.bench import benchmark, format_rows
    from quantir.utils import atomic_write_text, check_writable

    hw = parse_hw(args.hw)
    if args.json:
        check_writable(args.json)  # before the timing runs, not after them
    if args.psnr and len(args.psnr) != len(args.models):
        raise ConfigError(f"give one --psnr per model ({len(args.models)}), got {len(args.psnr)}")
    psnr = dict(zip(args.models, args.psnr)) if args.psnr else None
    try:
        rows = benchmark(args.models, hw, args.threads, args.runs, args.warmup, psnr)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(format_rows(rows))
    print(f"(input {hw[0]}x{hw[1]}, {args.threads} threads, {args.runs} interleaved runs after {args.warmup} warm-up)")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 0
