"""Helpers for the reliability tests: run the CLI, and read back its one error line."""

from __future__ import annotations

import pytest

from quantir.cli import main


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (exit code, error lines, stdout)``; asserts no traceback ever reaches the user."""

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "Traceback" not in out
        return code, [ln for ln in err.splitlines() if ln.startswith("error:")], out

    return run


def usage_error(capsys_err: str) -> str:
    """argparse's error line (after its usage lines)."""
    return [ln for ln in capsys_err.splitlines() if ": error: " in ln][-1]
