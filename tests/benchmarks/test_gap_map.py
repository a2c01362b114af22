"""benchmarks/gap_map.py splits INT8's extra squared error exactly over the regions it names."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
gap_map = pytest.importorskip("gap_map")


def _photos():
    rng = np.random.default_rng(0)
    target = rng.integers(20, 236, (48, 64, 3)).astype(np.uint8)
    target[16:32, 16:48] = 128  # a flat patch: the smooth region
    fp32 = np.clip(target.astype(int) + rng.integers(-3, 4, target.shape), 0, 255).astype(np.uint8)
    return target, fp32


def test_extra_error_adds_up_over_regions_and_terms():
    target, fp32 = _photos()
    rng = np.random.default_rng(1)
    int8 = np.clip(fp32.astype(int) + rng.integers(-1, 2, fp32.shape), 0, 255).astype(np.uint8)
    res = gap_map.photo_gap(target, fp32, int8, margin=4, smooth=2.0)
    assert sum(r["pixels"] for r in res["regions"].values()) == pytest.approx(1.0)
    assert sum(r["extra_share"] for r in res["regions"].values()) == pytest.approx(1.0)
    assert res["extra_mse"] == pytest.approx(res["diff_power"] + res["correlation_term"])
    mse = lambda a: float(((a.astype(float) - target) ** 2).mean())  # noqa: E731
    assert res["gap_db"] == pytest.approx(10 * np.log10(mse(fp32) / mse(int8)))
    assert sum(res["diff_share"].values()) == pytest.approx(1.0)


def test_a_difference_inside_the_flat_patch_is_charged_to_smooth():
    target, fp32 = _photos()
    int8 = fp32.copy()
    int8[20:28, 24:40] = np.clip(int8[20:28, 24:40].astype(int) + 2, 0, 255)  # +2 levels, inside the patch only
    res = gap_map.photo_gap(target, fp32, int8, margin=4, smooth=2.0)
    assert res["regions"]["smooth"]["extra_share"] == pytest.approx(1.0)
    assert res["regions"]["smooth"]["pixels"] > 0
    assert res["diff_mean_rgb"][0] == pytest.approx(2 * 8 * 16 / (48 * 64))


def test_figure_is_a_png_of_at_most_128_colours(tmp_path):
    target, fp32 = _photos()
    int8 = np.clip(fp32.astype(int) + 1, 0, 255).astype(np.uint8)
    res = gap_map.photo_gap(target, fp32, int8, margin=4, smooth=2.0)
    gap_map.figure([("a", res), ("b", res)], tmp_path / "worst.png")
    from PIL import Image
    with Image.open(tmp_path / "worst.png") as im:
        assert im.mode == "P" and len(im.getcolors(256)) <= 128


def test_a_missing_checkpoint_is_one_line_and_nothing_written(tmp_path):
    import subprocess
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gap_map.py"
    (tmp_path / "photos").mkdir()
    out = subprocess.run([sys.executable, str(script), "--fp32", str(tmp_path / "missing.safetensors"),
                          "--int8", str(tmp_path / "missing.tflite"), "--data", str(tmp_path / "photos"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines == [f"gap_map: {tmp_path / 'missing.safetensors'}: checkpoint not found"]
    assert not (tmp_path / "out").exists()
