"""Argument types that reject bad values at parse time: argparse prints the range and exits 2."""

from __future__ import annotations

import argparse
import math


def int_range(lo: int, hi: int | None = None):
    """An int in [lo, hi] (hi None: no upper bound)."""
    span = f">= {lo}" if hi is None else f"in {lo}..{hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {span}")
        return value

    parse.__name__ = "integer"
    return parse


def tile_size(lo: int, hi: int):
    """A tile bound in input pixels: ``N`` (N x N) or ``HxW``, each side in [lo, hi]; returns (H, W)."""
    side = int_range(lo, hi)

    def parse(text: str) -> tuple[int, int]:
        parts = text.lower().split("x")
        if len(parts) > 2:
            raise argparse.ArgumentTypeError(f"{text!r} is not a tile size: give N or HxW, e.g. 256 or 256x1024")
        h, w = side(parts[0]), side(parts[-1])
        return h, w

    parse.__name__ = "tile size"
    return parse


def pixel_count(text: str) -> int:
    """A finite pixel budget of at least one megapixel, written as 120e6 or 120000000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 1e6:
        raise argparse.ArgumentTypeError(f"{text} is not a usable limit: give a finite pixel count >= 1e6")
    return int(value)


pixel_count.__name__ = "pixel count"
