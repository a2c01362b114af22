"""The built-in INT8 models shipped in the package: present, fully int8, the right task, usable by default."""

import json

import numpy as np
import pytest
from PIL import Image

from quantir.cli import main
from quantir.export import tflite_graph as tg
from quantir.export.runtime import load_runtime
from quantir.infer import BACKEND_FILES, builtin_model
from tests.conftest import natural_image


@pytest.mark.parametrize("task", ["sr", "enhance"])
def test_builtin_artifacts_are_int8_and_carry_their_recipe(task):
    path = builtin_model(task)
    folder = path.parent
    for f in ("model_card.md", "config.yaml", "parity.json", *BACKEND_FILES.values()):
        assert (folder / f).is_file(), f
    ops = [r["op"] for r in tg.op_table(tg.read(path.read_bytes()))]
    assert "DEQUANTIZE" not in ops and "QUANTIZE" not in ops
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["tflite"]["all_int8"] and parity["tflite"]["max_lsb"] == 0
    rt = load_runtime(path, threads=1)
    assert rt.task == task and rt.scale == (3 if task == "sr" else 1)


@pytest.mark.parametrize("backend", ["tflite", "onnx", "torch"])
def test_default_upscale_uses_the_builtin_model(tmp_path, backend):
    src = tmp_path / "photo.jpg"
    Image.fromarray(natural_image(40, 52)).save(src, quality=92)
    out = tmp_path / "photo_x3.png"
    assert main(["upscale", str(src), "-o", str(out), "--backend", backend, "--quiet"]) == 0
    res = np.asarray(Image.open(out))
    assert res.shape == (120, 156, 3)


def test_default_enhance_uses_the_builtin_model(tmp_path):
    src = tmp_path / "photo.png"
    Image.fromarray(natural_image(48, 64)).save(src)
    out = tmp_path / "out.png"
    assert main(["enhance", str(src), "-o", str(out), "--quiet"]) == 0
    assert np.asarray(Image.open(out)).shape == (48, 64, 3)


def test_shipped_checkpoint_is_inference_only_and_export_says_so(tmp_path, capsys):
    ckpt = builtin_model("sr", backend="torch")
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inference-only" in err[0]
    assert not out.exists() or not any(out.iterdir())
