"""``quantir`` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import signal
import sys

from quantir import __version__
from quantir.errors import QuantirError

def build_parser() -> argparse.ArgumentParser:
    from quantir.cli import analyze_cmd, bench_cmd, data_cmd, eval_cmd, export_cmd, infer_cmd, quantize_cmd, train_cmd

    parser = argparse.ArgumentParser(
        prog="quantir",
        description="Train tiny image-restoration nets with INT8 QAT and ship fully-integer TFLite/ONNX models "
                    "that compute what training saw.")
    parser.add_argument("--version", action="version", version=f"quantir {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    export_cmd.add_convert_parser(sub)
    quantize_cmd.add_parser(sub)
    eval_cmd.add_parser(sub)
    analyze_cmd.add_parser(sub)
    bench_cmd.add_parser(sub)
    infer_cmd.add_parsers(sub)
    data_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from quantir.cli.logs import configure

    parser = build_parser()
    args = parser.parse_args(argv)
    configure(quiet=getattr(args, "quiet", False), verbose=args.verbose)
    try:
        # SIGTERM unwinds like Ctrl-C, so atomic writes remove their temporaries (default: instant death)
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    try:
        return int(args.func(args) or 0)
    except QuantirError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so cleanup code runs."""


def _terminate(signum, frame):
    raise Terminated()


def entry() -> None:
    sys.exit(main())
