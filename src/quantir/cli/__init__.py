"""``quantir`` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import sys

from quantir import __version__
from quantir.errors import QuantirError

COMMANDS = ("train", "export", "eval", "bench", "upscale", "enhance", "data")


def build_parser() -> argparse.ArgumentParser:
    from quantir.cli import bench_cmd, data_cmd, eval_cmd, export_cmd, infer_cmd, train_cmd

    parser = argparse.ArgumentParser(
        prog="quantir",
        description="Train tiny image-restoration nets with INT8 QAT and ship fully-integer TFLite/ONNX models "
                    "that compute what training saw.")
    parser.add_argument("--version", action="version", version=f"quantir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    infer_cmd.add_parsers(sub)
    data_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QuantirError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
