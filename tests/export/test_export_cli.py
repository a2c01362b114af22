import json

import pytest

from quantir.cli import main
from tests.train.conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tmp)
    out = tmp / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    return out


def test_export_run_dir_with_fixed_shape(run_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(run_dir), "--shape", "16x24", "--out", str(out)]) == 0
    for f in ("model_int8.tflite", "model_int8_16x24.tflite", "model_float.tflite", "model_int8.onnx",
              "parity.json", "model_card.md", "config.yaml"):
        assert (out / f).is_file(), f
    parity = json.loads((out / "parity.json").read_text())
    assert parity["tflite"]["max_lsb"] == 0 and parity["tflite"]["all_int8"]
    assert "max LSB" in capsys.readouterr().out


def test_export_ptq_needs_calibration_photos(run_dir, tmp_path, capsys):
    ckpt = run_dir / "checkpoints" / "deploy_fp32.safetensors"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x")]) == 2
    assert "--ptq" in capsys.readouterr().err
    calib = run_dir.parent / "train"
    assert main(["export", str(ckpt), "--ptq", "mse", "--calib", str(calib), "--out", str(tmp_path / "ptq"),
                 "--format", "tflite", "--parity-data", str(run_dir.parent / "eval")]) == 0
    parity = json.loads((tmp_path / "ptq" / "parity.json").read_text())
    assert parity["tflite"]["max_lsb"] == 0


def test_bench_reports_rows_without_asserting_speed(run_dir, tmp_path):
    out = tmp_path / "bench.json"
    art = run_dir.parent / "exp_for_bench"
    assert main(["export", str(run_dir), "--out", str(art), "--format", "tflite"]) == 0
    assert main(["bench", str(art / "model_int8.tflite"), "--hw", "24x32", "--runs", "2", "--warmup", "1",
                 "--psnr", "28.0", "--json", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert {"median_ms", "min_ms", "gmac", "gmac_per_s", "mai_score"} <= set(row)


def test_export_rejects_bad_inputs(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope")]) == 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert main(["export", str(bad)]) == 2
    assert main(["export", str(bad), "--shape", "12by4"]) == 2
    errs = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errs) == 3
