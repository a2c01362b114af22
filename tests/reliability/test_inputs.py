"""Bad input: one line (or argparse's range message), a non-zero exit, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.conftest import natural_image
from tests.reliability.conftest import usage_error


def _photo(path, h=24, w=32, seed=0):
    Image.fromarray(natural_image(h, w, seed=seed)).save(path)
    return path


def test_empty_folder_is_an_error(cli, tmp_path, sr_model):
    (tmp_path / "empty").mkdir()
    code, errors, out = cli("upscale", tmp_path / "empty", "-o", tmp_path / "out", "--model", sr_model, "--quiet")
    assert code == 2 and len(errors) == 1 and "no photos" in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value", [("--max-pixels", "nan"), ("--max-pixels", "inf"), ("--max-pixels", "10"),
                                        ("--tile", "0"), ("--tile", "1"), ("--tile", "7"), ("--tile", "-5"),
                                        ("--threads", "0"), ("--scale", "0")])
def test_bad_arguments_exit_2_with_the_valid_range(capsys, tmp_path, flag, value):
    from quantir.cli import main

    src = _photo(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exc:
        main(["upscale", str(src), "-o", str(tmp_path / "o.png"), flag, value])
    assert exc.value.code == 2
    line = usage_error(capsys.readouterr().err)
    assert flag in line and any(w in line for w in ("range", ">=", "usable")), line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("args", [["--scale", "0"], ["--scale", "-2"], ["--limit", "0"], ["--threads", "0"]])
def test_eval_bad_numbers(capsys, tmp_path, args):
    from quantir.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "bicubic", "--data", str(tmp_path), *args])
    assert exc.value.code == 2 and args[0] in usage_error(capsys.readouterr().err)


def test_eval_images_smaller_than_the_scale(cli, tmp_path):
    data = tmp_path / "tiny"
    data.mkdir()
    _photo(data / "a.png", 2, 2)
    code, errors, _ = cli("eval", "bicubic", "--data", data, "--scale", "3")
    assert code == 2 and len(errors) == 1 and "too small" in errors[0]


def test_pixel_limit_counts_the_output(cli, tmp_path, sr_model):
    src = _photo(tmp_path / "a.png", 600, 600)  # 0.36 MP in, 3.24 MP out at x3
    out = tmp_path / "o.png"
    code, errors, _ = cli("upscale", src, "-o", out, "--model", sr_model, "--max-pixels", "2e6", "--quiet")
    assert code == 1 and len(errors) == 1 and "1800x1800" in errors[0] and "2.0 MP" in errors[0]
    assert not out.exists()


def test_animated_gif_says_first_frame_only(cli, tmp_path, sr_model):
    frames = [Image.fromarray(natural_image(20, 24, seed=k)) for k in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    code, errors, out = cli("upscale", gif, "-o", tmp_path / "o.png", "--model", sr_model, "--quiet")
    assert code == 0 and not errors
    assert "warning: " in out and "3 frames; only the first is used" in out  # --quiet keeps warnings
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (60, 72, 3)


def test_config_errors_name_the_key_path(cli, tmp_path):
    from tests.train.conftest import tiny_config

    code, errors, _ = cli("train", tiny_config(tmp_path), "--out", tmp_path / "run", "--set", "stage1.lr=-1")
    assert code == 2 and errors == ["error: stage1.lr must be positive"]
    code, errors, _ = cli("train", tiny_config(tmp_path), "--out", tmp_path / "run",
                          "--set", "qat.quant.odm.granularity=bogus")
    assert code == 2 and "qat.quant.odm.granularity" in errors[0] and "'layer'" in errors[0]
    assert not (tmp_path / "run").exists()
