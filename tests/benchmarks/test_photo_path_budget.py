"""benchmarks/photo_path_budget.py replays the photo path itself: its output file is the CLI's, byte
for byte, and its parts cover every tile the CLI runs."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantir.cli import main as cli
from quantir.infer import Processor, builtin_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
photo_path_budget = pytest.importorskip("photo_path_budget")


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_replay_writes_the_cli_output_and_counts_every_tile(tmp_path, ext):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 520, dtype=np.float32)
    rgb = np.stack([np.add.outer(ramp[:470] * 0.5, ramp * 0.5), np.tile(ramp, (470, 1)),
                    np.full((470, 520), 90.0)], axis=2) + rng.normal(0, 12, (470, 520, 3))
    src = tmp_path / "in.jpg"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(src, quality=95)
    res = photo_path_budget.budget(builtin_model("sr"), "sr", src, tmp_path / f"replay.{ext}", threads=2)
    assert cli(["upscale", str(src), "-o", str(tmp_path / f"cli.{ext}"), "--threads", "2", "--quiet"]) == 0
    assert (tmp_path / f"replay.{ext}").read_bytes() == (tmp_path / f"cli.{ext}").read_bytes()
    proc = Processor(builtin_model("sr"), "sr", 3, threads=2)
    assert res["tiles"] == proc.tiling(np.zeros((470, 520, 3), np.uint8))[2] > 1 and res["workers"] == 2
    # the tiles it ran hold the pixels the CLI's processor runs, overlaps included
    assert res["tile_px_ratio"] == pytest.approx(proc.model_pixels(470, 520) / (470 * 520))
    assert all(v >= 0 for v in res["cpu_s"].values()) and res["cpu_s"]["invoke"] > 0
    assert res["cpu_total_s"] == pytest.approx(sum(res["cpu_s"].values()))
