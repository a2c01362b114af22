"""The photo-path benchmarks refuse a missing or unreadable --photo in one line, before any work,
with the message the CLI gives for the same photo."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script, extra", [("photo_path.py", ["--cases", "sr:64x64:png"]),
                                           ("jpeg_encode.py", []),
                                           ("photo_path_timeline.py", ["--case", "sr:64x64:png"]),
                                           ("photo_path_budget.py", ["--case", "sr:64x64:png"])])
@pytest.mark.parametrize("bad, why", [("missing.jpg", "file not found"), ("notes.txt", "not an image")])
def test_unreadable_photo_is_one_line_and_exit_1(tmp_path, script, extra, bad, why):
    (tmp_path / "notes.txt").write_text("not an image")
    out = subprocess.run([sys.executable, str(BENCH / script), "--photo", str(tmp_path / bad), *extra],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / bad}: {why}")  # the CLI's own message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written
