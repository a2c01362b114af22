"""Where the library's log records go: the CLI configures it once, the library only logs."""

from __future__ import annotations

import logging
import sys


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


def configure(quiet: bool = False, verbose: int = 0) -> None:
    """INFO lines (progress lines, result tables) to stdout; ``--quiet``: warnings only; ``-v``: debug."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("quantir")
    for h in list(root.handlers):
        if getattr(h, "_quantir_cli", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter())
    handler._quantir_cli = True  # replaced, not duplicated, when main() runs again (tests)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
