"""The benchmark tables run on DIV2K / DPED when given (--div2k / --dped): their configs, calibration,
parity and evaluation photos resolve to the right splits of a DIV2K / DPED folder tree."""

import sys
from pathlib import Path

import pytest

from quantir.data.io import write_image
from quantir.export.from_checkpoint import calibration_inputs
from quantir.models import create_model
from quantir.train.data import eval_pairs
from tests.conftest import natural_image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
common = pytest.importorskip("common")
sr_quant = pytest.importorskip("sr_quant")


def _photos(folder: Path, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    for k in range(n):
        write_image(folder / f"{k:04d}.png", natural_image(size, size, seed=seed + k))


def test_sr_tables_use_div2k_train_for_calibration_and_valid_for_evaluation(tmp_path):
    root = tmp_path / "DIV2K"
    _photos(root / "DIV2K_train_HR", 3, 96, 0)
    _photos(root / "DIV2K_valid_HR", 2, 96, 100)
    settings = common.BenchSettings(tmp_path / "out", quick=True, div2k=str(root))
    cfg = sr_quant.fp32_config(settings, sr_quant.MODELS["abpn"])
    assert cfg.data.layout == "div2k" and cfg.data.root == str(root)
    pairs = eval_pairs(cfg)
    assert len(pairs) == 2 and pairs[0].input.shape == (32, 32, 3)
    assert Path(settings.calib_dir("sr")).name == "DIV2K_train_HR"
    assert Path(settings.parity_dir("sr")).name == "DIV2K_valid_HR"
    info = create_model("abpn").info
    crops = list(calibration_inputs(info, settings.calib_dir("sr"), n=2, size=24))
    assert len(crops) == 2
    assert "DIV2K" in settings.data_description("sr") and "DIV2K" not in settings.data_description("enhance")


def test_enhancement_table_uses_dped_training_and_test_patches(tmp_path):
    root = tmp_path / "dped"
    for split in ("training_data", "test_data/patches"):
        for cam in ("iphone", "canon"):
            _photos(root / "iphone" / split / cam, 6, 40, 0 if cam == "iphone" else 50)
    settings = common.BenchSettings(tmp_path / "out", quick=True, dped=str(root))
    cfg = common.make_config(settings, "enhance", {"model": "qatie_unet_int8", "data": {"val_holdout": 2}})
    assert cfg.data.layout == "dped"
    assert eval_pairs(cfg) is not None and len(eval_pairs(cfg)) == 6
    assert Path(settings.calib_dir("enhance")).parts[-2:] == ("training_data", "iphone")
    assert Path(settings.parity_dir("enhance")).parts[-3:] == ("test_data", "patches", "iphone")


def test_sample_photos_are_the_default(tmp_path):
    settings = common.BenchSettings(tmp_path / "out", quick=True)
    assert settings.calib_dir("sr").endswith("train") and settings.parity_dir("enhance").endswith("eval")
