"""Outputs: every input gets its own file, nothing is overwritten or destroyed unasked, modes are normal."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from quantir.utils import TEMP_SUFFIX, atomic_path, remove_stale_temps
from tests.conftest import natural_image


def _photo(path, seed=0, h=20, w=24):
    img = natural_image(h, w, seed=seed)
    Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(img).save(path)
    return path


def test_name_collisions_never_lose_an_output(cli, tmp_path, sr_model):
    src = tmp_path / "in"
    src.mkdir()
    for k, name in enumerate(("a.jpg", "a.png", "a_2.png")):
        _photo(src / name, seed=k)
    out = tmp_path / "out"
    code, errors, _ = cli("upscale", src, "-o", out, "--model", sr_model, "--quiet")
    assert code == 0 and not errors
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_2.png", "a_jpg.png", "a_png.png"]
    outputs = [np.asarray(Image.open(out / n)) for n in names]
    assert len({o.tobytes() for o in outputs}) == 3  # three different photos, three different results
    code, errors, _ = cli("upscale", src, "-o", out, "--model", sr_model, "--quiet")
    assert code == 1 and len(errors) == 3 and all("already exists" in e for e in errors)
    code, errors, _ = cli("upscale", src, "-o", out, "--model", sr_model, "--quiet", "--overwrite")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == names


def test_compare_image_is_not_overwritten_unasked(cli, tmp_path, sr_model):
    src = _photo(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_compare.png").write_bytes(b"keep me")
    code, errors, _ = cli("upscale", src, "-o", out, "--model", sr_model, "--quiet", "--compare")
    assert code == 1 and "x_compare.png: already exists" in errors[0]
    assert (out / "x_compare.png").read_bytes() == b"keep me" and not (out / "x.png").exists()


def test_output_under_a_file_is_refused_by_its_nearest_existing_parent(cli, tmp_path, sr_model):
    src = _photo(tmp_path / "x.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, errors, _ = cli("upscale", src, "-o", blocker / "sub" / "o.png", "--model", sr_model, "--quiet")
    assert code == 1 and len(errors) == 1 and "is a file, not a folder" in errors[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check cannot be seen")
def test_read_only_parent_is_reported(cli, tmp_path, sr_model):
    src = _photo(tmp_path / "x.png")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, errors, _ = cli("upscale", src, "-o", ro / "new" / "o.png", "--model", sr_model, "--quiet")
    assert code == 1 and "not writable" in errors[0]


def test_output_equal_to_an_input_is_refused(cli, tmp_path, sr_model):
    src = _photo(tmp_path / "x.png")
    before = src.read_bytes()
    code, errors, _ = cli("upscale", src, "-o", src, "--model", sr_model, "--quiet", "--overwrite")
    assert code == 2 and "is an input" in errors[0] and src.read_bytes() == before
    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "y.png")
    before = (folder / "y.png").read_bytes()
    code, errors, _ = cli("upscale", folder, "-o", folder, "--model", sr_model, "--quiet", "--overwrite")
    assert code == 2 and (folder / "y.png").read_bytes() == before


def test_several_inputs_into_a_file_name_are_refused(cli, tmp_path, sr_model):
    a, b = _photo(tmp_path / "a.png"), _photo(tmp_path / "b.png", seed=1)
    code, errors, _ = cli("upscale", a, b, "-o", tmp_path / "out.png", "--model", sr_model, "--quiet")
    assert code == 2 and "need an output folder" in errors[0]
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_json_to_an_unwritable_place_fails_before_the_work(cli, tmp_path, sr_model, command):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    data = tmp_path / "data"
    data.mkdir()
    _photo(data / "a.png", h=48, w=48)
    args = (["eval", "bicubic", "--data", data] if command == "eval" else
            ["bench", sr_model, "--hw", "24x24", "--runs", "1", "--warmup", "0"])
    code, errors, out = cli(*args, "--json", blocker / "r.json")
    assert code == 2 and len(errors) == 1 and "is a file, not a folder" in errors[0]
    assert "PSNR" not in out and "median" not in out  # refused before computing anything


def test_outputs_get_the_mode_a_plain_open_would(cli, tmp_path, sr_model):
    old = os.umask(0o022)
    try:
        src = _photo(tmp_path / "x.png")
        code, *_ = cli("upscale", src, "-o", tmp_path / "o.png", "--model", sr_model, "--quiet")
        assert code == 0
        assert stat.S_IMODE((tmp_path / "o.png").stat().st_mode) == 0o644
        os.umask(0o077)
        with atomic_path(tmp_path / "private.bin") as tmp:
            tmp.write_bytes(b"x")
        assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_temporaries_are_never_taken_as_inputs_and_leftovers_are_cleaned(cli, tmp_path, sr_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a.png")
    # a temporary a killed writer (pid 2**22 + 1: above any live pid here) left, and one of a live writer
    dead = folder / f".b.png.{2 ** 22 + 1}.abcd1234{TEMP_SUFFIX}"
    live = folder / f".c.png.{os.getpid()}.abcd1234{TEMP_SUFFIX}"
    old_style = folder / ".d.png.abcd.png"  # quantir 0.1's temporary name
    for p in (dead, live, old_style):
        p.write_bytes(b"partial")
    out = tmp_path / "out"
    code, errors, _ = cli("upscale", folder, "-o", out, "--model", sr_model, "--quiet")
    assert code == 0 and [p.name for p in out.iterdir()] == ["a.png"]
    assert remove_stale_temps(folder) == 1 and not dead.exists() and live.exists()


def test_interrupted_write_leaves_no_temporary(tmp_path):
    from quantir.cli import Terminated

    with pytest.raises(Terminated):
        with atomic_path(tmp_path / "o.png") as tmp:
            tmp.write_bytes(b"half")
            raise Terminated()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_unwinds_the_cli(tmp_path, sr_model, monkeypatch, capsys):
    import signal

    import quantir.infer as infer
    from quantir.cli import main

    def killed_mid_write(jobs, *args, **kwargs):
        with atomic_path(jobs[0].target) as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(infer, "run_batch", killed_mid_write)
    src = _photo(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out / "o.png"), "--model", str(sr_model), "--quiet"]) == 143
    assert "terminated" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
