import json

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from quantir.cli import main
from quantir.data.datasets import sr_pairs
from quantir.data.resize import upscale


def test_eval_bicubic_json_matches_scikit_image(photo_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", "bicubic", "--data", str(photo_dir), "--task", "sr", "--scale", "3", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"psnr_rgb", "psnr_y", "ssim_y", "n_images"} <= set(res) and res["n_images"] == 6
    ref = np.mean([peak_signal_noise_ratio(p.target, upscale(p.input, 3), data_range=255)
                   for p in sr_pairs(photo_dir, 3)])
    assert abs(res["psnr_rgb"] - ref) < 1e-3
    assert "bicubic" in capsys.readouterr().out


@pytest.mark.network
def test_eval_bicubic_on_sample_photos(samples_dir, tmp_path):
    out = tmp_path / "r.json"
    assert main(["eval", "bicubic", "--data", str(samples_dir / "eval"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_images"] >= 15 and 20 < res["psnr_rgb"] < 40


def test_bad_photo_is_one_line_error_and_no_output(photo_dir, tmp_path, capsys):
    (photo_dir / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "r.json"
    code = main(["eval", "bicubic", "--data", str(photo_dir), "--json", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_folder_and_wrong_baseline(tmp_path, capsys):
    assert main(["eval", "bicubic", "--data", str(tmp_path / "nope")]) != 0
    assert main(["eval", "bicubic", "--data", str(tmp_path), "--task", "enhance"]) != 0
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and all(e.startswith("error:") for e in errs)
