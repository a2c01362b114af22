import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantir.cli import build_parser, main
from tests.conftest import natural_image

ROOT = Path(__file__).resolve().parents[2]


SUBCOMMANDS = {"train", "quantize", "export", "convert-checkpoint", "eval", "analyze", "bench", "upscale", "enhance", "data"}


def test_parser_has_exactly_the_documented_subcommands():
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == SUBCOMMANDS


def test_help_lists_every_subcommand():
    res = subprocess.run([sys.executable, "-m", "quantir", "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert res.returncode == 0
    for cmd in SUBCOMMANDS:
        assert cmd in res.stdout


def _png(path, img, mode=None):
    Image.fromarray(img, mode).save(path)
    return path


def test_upscale_file_and_folder(sr_model, tmp_path):
    src = _png(tmp_path / "a.png", natural_image(20, 24))
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-o", str(out), "--model", str(sr_model), "--quiet"]) == 0
    assert Image.open(out).size == (72, 60)
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        _png(folder / f"p{k}.png", natural_image(16, 20, seed=k))
    assert main(["upscale", str(folder), "-o", str(tmp_path / "outdir"), "--model", str(sr_model), "--quiet",
                 "--compare"]) == 0
    names = sorted(p.name for p in (tmp_path / "outdir").iterdir())
    assert names == ["p0.png", "p0_compare.png", "p1.png", "p1_compare.png", "p2.png", "p2_compare.png"]


def test_tiled_upscale_matches_untiled(sr_model, tmp_path):
    src = _png(tmp_path / "a.png", natural_image(90, 110))
    assert main(["upscale", str(src), "-o", str(tmp_path / "full.png"), "--model", str(sr_model), "--quiet",
                 "--tile", "512"]) == 0
    assert main(["upscale", str(src), "-o", str(tmp_path / "tiled.png"), "--model", str(sr_model), "--quiet",
                 "--tile", "72"]) == 0
    a = np.asarray(Image.open(tmp_path / "full.png"))
    b = np.asarray(Image.open(tmp_path / "tiled.png"))
    assert np.array_equal(a, b)  # receptive field (5 px) < tile margin: tiles are exact
    assert main(["upscale", str(src), "-o", str(tmp_path / "wide.png"), "--model", str(sr_model), "--quiet",
                 "--tile", "72x150"]) == 0
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "wide.png")))


@pytest.mark.parametrize("text, want", [("256", (256, 256)), ("256x1024", (256, 1024)), ("300X80", (300, 80))])
def test_tile_size_parses_a_side_or_height_by_width(text, want):
    from quantir.cli.args import tile_size

    assert tile_size(72, 16384)(text) == want


@pytest.mark.parametrize("text", ["256x", "x256", "256x1024x3", "64x256", "abc", "0"])
def test_tile_size_rejects_bad_sizes_in_one_line(text, capsys):
    with pytest.raises(SystemExit) as err:
        main(["upscale", "in.png", "-o", "out.png", "--tile", text])
    assert err.value.code == 2
    assert "--tile" in capsys.readouterr().err


def test_alpha_16bit_gray_exif_icc(sr_model, enhance_model, tmp_path):
    from PIL import ImageCms

    rgba = np.dstack([natural_image(16, 20), np.linspace(0, 255, 320).reshape(16, 20).astype(np.uint8)])
    _png(tmp_path / "alpha.png", rgba, "RGBA")
    assert main(["upscale", str(tmp_path / "alpha.png"), "-o", str(tmp_path / "alpha_x3.png"), "--model",
                 str(sr_model), "--quiet"]) == 0
    out = Image.open(tmp_path / "alpha_x3.png")
    assert out.mode == "RGBA" and out.size == (60, 48)
    g16 = (natural_image(16, 16)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert main(["enhance", str(tmp_path / "g16.png"), "-o", str(tmp_path / "g16_out.png"), "--model",
                 str(enhance_model), "--quiet"]) == 0
    assert Image.open(tmp_path / "g16_out.png").mode == "L"
    im = Image.fromarray(natural_image(10, 20))
    exif = im.getexif()
    exif[0x0112] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), icc_profile=icc)
    assert main(["upscale", str(tmp_path / "rot.jpg"), "-o", str(tmp_path / "rot.png"), "--model", str(sr_model),
                 "--quiet"]) == 0
    out = Image.open(tmp_path / "rot.png")
    assert out.size == (30, 60) and out.info.get("icc_profile") == icc  # upright (EXIF applied), profile kept


def _errors(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]


def test_error_cases_one_line_each_and_batch_continues(sr_model, enhance_model, tmp_path, capsys):
    good = _png(tmp_path / "good.png", natural_image(12, 12))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    outdir = tmp_path / "out"
    code = main(["upscale", str(good), str(bad), str(tmp_path / "missing.png"), "-o", str(outdir), "--model",
                 str(sr_model), "--quiet"])
    assert code == 1 and (outdir / "good.png").is_file()
    assert not (outdir / "bad.png").exists() and not (outdir / "missing.png").exists()
    assert len(_errors(capsys)) == 2
    assert not [p for p in outdir.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    # existing output without --overwrite
    assert main(["upscale", str(good), "-o", str(outdir / "good.png"), "--model", str(sr_model), "--quiet"]) == 1
    assert "already exists" in _errors(capsys)[0]
    # wrong task and wrong scale
    assert main(["upscale", str(good), "-o", str(tmp_path / "x.png"), "--model", str(enhance_model)]) == 2
    assert main(["upscale", str(good), "-o", str(tmp_path / "x.png"), "--model", str(sr_model), "--scale", "2"]) == 2
    errs = _errors(capsys)
    assert len(errs) == 2 and "enhance" in errs[0] and "x3" in errs[1]
    # unwritable output location (its parent is a file, so even root cannot create it)
    code = main(["upscale", str(good), "-o", str(good / "x.png"), "--model", str(sr_model), "--quiet"])
    errs = _errors(capsys)
    assert code == 1 and len(errs) == 1 and "cannot write" in errs[0]
    assert not (tmp_path / "x.png").exists()


def test_inference_path_does_not_import_torch(sr_model, tmp_path):
    src = _png(tmp_path / "a.png", natural_image(12, 12))
    code = ("import sys, runpy; sys.argv = ['quantir', 'upscale', %r, '-o', %r, '--model', %r, '--quiet'];"
            "from quantir.cli import main; rc = main(sys.argv[1:]);"
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)") % (
        str(src), str(tmp_path / "o.png"), str(sr_model))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("task", ["sr", "enhance"])
def test_band_wise_png_equals_the_whole_image_output(sr_model, enhance_model, tmp_path, task):
    """The streamed PNG (one band per tile row) holds exactly the pixels of the held-in-memory run;
    for SR, whose receptive field fits the overlap, that is also the untiled whole-image run."""
    from quantir.evaluate.predictors import load_model
    from quantir.infer import Processor, min_tile

    model = sr_model if task == "sr" else enhance_model
    src = _png(tmp_path / "in.png", natural_image(2 * min_tile(task) + 21, 2 * min_tile(task) + 13))
    cmd = "upscale" if task == "sr" else "enhance"
    assert main([cmd, str(src), "-o", str(tmp_path / "out.png"), "--model", str(model), "--tile",
                 str(min_tile(task)), "--quiet"]) == 0
    streamed = np.asarray(Image.open(tmp_path / "out.png"))
    proc = Processor(model, task, 3 if task == "sr" else 1, tile=min_tile(task))
    bands = list(proc.bands(np.asarray(Image.open(src))))
    assert len(bands) >= 3  # really band-wise
    held = proc.run(np.asarray(Image.open(src)))
    assert np.array_equal(streamed, held)
    if task == "sr":
        assert np.array_equal(streamed, load_model(model).run(np.asarray(Image.open(src))))


def test_default_tiles_grow_only_where_tiles_meet_exactly(sr_model, enhance_model):
    """No --tile: a model whose tiles meet at an exact cut gets large tiles whose total size over the
    workers is bounded (memory stays put as --threads grows), and the output is the same bits for any
    count; cross-fading or unknown-field models keep one fixed size, so --threads cannot move a seam."""
    from quantir.infer import EXACT_TILE_SIDE, FIXED_TILE_SIDE, TILE_PIXELS, Processor
    from quantir.data.task import Task

    procs = {t: Processor(sr_model, "sr", 3, threads=t) for t in (1, 2, 3, 8)}
    assert procs[1].model.radius is not None
    assert procs[1].tile == procs[2].tile == (EXACT_TILE_SIDE, EXACT_TILE_SIDE)
    assert procs[3].tile[0] < EXACT_TILE_SIDE and procs[8].tile[0] < procs[3].tile[0]
    assert all(len(p.workers) * p.tile[0] * p.tile[1] <= TILE_PIXELS[Task.SR] for p in procs.values()
               if len(p.workers) > 1)
    img = natural_image(EXACT_TILE_SIDE + 40, 2 * EXACT_TILE_SIDE + 17)  # several tiles of each size
    assert np.array_equal(procs[1].run(img), procs[3].run(img))
    fixed = {Task.SR: (FIXED_TILE_SIDE[Task.SR],) * 2, Task.ENHANCE: (FIXED_TILE_SIDE[Task.ENHANCE],) * 2}
    assert Processor(sr_model.with_suffix(".onnx"), "sr", 3, backend="onnx", threads=3).tile == fixed[Task.SR]
    enh = [Processor(enhance_model, "enhance", 1, threads=t) for t in (1, 3)]
    assert 2 * enh[0].model.radius > 48  # a U-Net: cross-fading tiles
    assert enh[0].tile == enh[1].tile == fixed[Task.ENHANCE]


def test_fixed_tiles_bound_memory_with_fewer_workers(enhance_model, monkeypatch):
    """Cross-fading tiles cannot shrink with --threads, so the workers do: at --threads 8 the enhancer
    runs TILE_PIXELS' worth of 768-px tiles (two workers of four threads), the bits of one worker."""
    import quantir.infer
    from quantir.data.task import Task
    from quantir.infer import FIXED_TILE_SIDE, TILE_PIXELS, Processor

    side = FIXED_TILE_SIDE[Task.ENHANCE]
    one = Processor(enhance_model, "enhance", 1, threads=1)
    loads = []
    load = quantir.infer.load_model
    monkeypatch.setattr(quantir.infer, "load_model", lambda *a, **k: loads.append(k["threads"]) or load(*a, **k))
    eight = Processor(enhance_model, "enhance", 1, threads=8)
    assert len(eight.workers) == TILE_PIXELS[Task.ENHANCE] // side ** 2 == 2 and eight.tile == one.tile
    assert loads[-2:] == [4, 4] and eight.model is eight.workers[0]
    img = natural_image(side + 24, 40)  # two tiles, cross-faded
    assert np.array_equal(one.run(img), eight.run(img))
    loads.clear()
    small = Processor(enhance_model, "enhance", 1, tile=side // 2, threads=8)  # a quarter of the pixels each
    assert len(small.workers) == 8 and loads == [1] * 8
    loads.clear()
    assert len(Processor(enhance_model, "enhance", 1, threads=7).workers) == 2 and loads[-2:] == [4, 3]


def test_prepare_allocates_what_the_tiles_run(sr_model, enhance_model, tmp_path, monkeypatch):
    """Processor.load has the first worker allocate for the photo's tile shape while it decodes: it
    allocates nothing more for the photo's tiles (an allocation holds the GIL for a tile's worth)."""
    from quantir.infer import Processor

    for model, task, scale in ((sr_model, "sr", 3), (enhance_model, "enhance", 1)):
        proc = Processor(model, task, scale, threads=2)
        src = tmp_path / f"{task}.png"
        Image.fromarray(natural_image(proc.tile[0] + 57, 2 * proc.tile[1] + 3)).save(src)  # uneven tiles
        photo = proc.load(src)
        calls = []
        first = proc.workers[0].interpreter
        monkeypatch.setattr(first, "allocate_tensors", lambda f=first.allocate_tensors: calls.append(1) or f())
        assert proc.workers[0]._shape is not None and proc.workers[1]._shape is None
        proc.run(photo.rgb)
        assert calls == [] and proc.workers[1]._shape is not None


@pytest.mark.parametrize("task", ["sr", "enhance"])
def test_tile_workers_give_the_bits_of_one_worker(sr_model, enhance_model, task):
    """--threads 3 shares the tiles among three single-threaded copies of the model (TFLite and
    ONNX); the output is the one-worker output to the bit, cross-faded seams (the U-Net) included."""
    from quantir.infer import Processor, min_tile

    model = sr_model if task == "sr" else enhance_model
    img = natural_image(2 * min_tile(task) + 21, 3 * min_tile(task) + 13)
    scale = 3 if task == "sr" else 1
    one = Processor(model, task, scale, tile=min_tile(task), threads=1)
    three = Processor(model, task, scale, tile=min_tile(task), threads=3)
    assert len(one.workers) == 1 and len(three.workers) == 3
    assert np.array_equal(one.run(img), three.run(img))
    small = img[:min_tile(task), :min_tile(task)]  # one tile: one copy of the model with all the threads
    assert np.array_equal(one.run(small), three.run(small)) and three._whole not in three.workers
    onnx = model.with_suffix(".onnx")  # exported beside the TFLite file by the fixture
    a = Processor(onnx, task, scale, backend="onnx", tile=min_tile(task), threads=1).run(img)
    assert np.array_equal(a, Processor(onnx, task, scale, backend="onnx", tile=min_tile(task), threads=2).run(img))
