"""End-to-end training on tiny configs: stages, files, resume after kill -9, NaN stop, --init, DDP."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quantir.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run_cli(args, env_extra=None, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "quantir", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [(r["stage"], r["step"], r["loss"], r["val_psnr"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("task", ["sr", "enhance"])
def test_tiny_run_produces_all_files(make_config, tmp_path, task):
    cfg = make_config(task=task, **{"export.enabled": True, "export.parity_limit": 1})
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    for f in ("config.yaml", "metrics.csv", "report.md", "curves.png", "results.json", "state.json",
              "checkpoints/stage1_last.safetensors", "checkpoints/stage1_best.safetensors", "checkpoints/qat_final.safetensors",
              "checkpoints/deploy_fp32.safetensors", "export/model_int8.tflite", "export/model_int8.onnx",
              "export/parity.json", "export/model_card.md"):
        assert (out / f).is_file(), f
    res = json.loads((out / "results.json").read_text())["eval"]
    baseline = "bicubic" if task == "sr" else "input"
    assert {baseline, "FP32 (fused)", "INT8 fake-quant", "INT8 TFLite", "INT8 ONNX"} <= set(res)
    assert abs(res["INT8 TFLite"]["psnr_rgb"] - res["INT8 fake-quant"]["psnr_rgb"]) < 0.05
    stress = json.loads((out / "results.json").read_text())["stress"]
    assert set(stress) == set(res) and stress["FP32 (fused)"]["n_images"] == 1
    report = (out / "report.md").read_text()
    assert "INT8 TFLite" in report and "curves.png" in report
    assert "## Stress photos (1 images" in report and "INT8 TFLite - FP32:" in report
    assert "model_card.md, model_float.tflite, model_int8.onnx, model_int8.tflite, parity.json" in report
    stages = {r[0] for r in _rows(out)}
    assert {"stage1", "qat"} <= stages


# qat.train.ema: the QAT graph's weight average must resume and export like the FP32 stages' EMA
KILL_OVERRIDES = {"teacher.enabled": True, "teacher.model_options": {"channels": 8, "res_blocks": 1},
                  "teacher.train": {"steps": 10, "val_every": 5, "ckpt_every": 5},
                  "qat.train": {"steps": 10, "val_every": 5, "ckpt_every": 5, "ema": 0.9}, "export.enabled": True,
                  "export.formats": ["tflite"], "export.parity_limit": 1}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from tests.train.conftest import tiny_config

    tmp = tmp_path_factory.mktemp("kill")
    cfg = tiny_config(tmp, **KILL_OVERRIDES)
    assert _run_cli(["train", str(cfg), "--out", str(tmp / "ref"), "--quiet"]).returncode == 0
    return cfg, tmp / "ref"


@pytest.mark.parametrize("stage,step", [("teacher", 6), ("stage1", 17), ("stage2", 3), ("qat", 7), ("export", 0)])
def test_kill_and_resume_matches_uninterrupted_run(uninterrupted, tmp_path, stage, step):
    """kill -9 inside every stage and during export; --resume gives the same metrics and the same artifact."""
    cfg, ref = uninterrupted
    run = tmp_path / "run"
    killed = _run_cli(["train", str(cfg), "--out", str(run), "--quiet"], {"QUANTIR_FAULT": f"kill:{stage}:{step}"})
    assert killed.returncode == -signal.SIGKILL
    assert not (run / "results.json").exists()
    resumed = _run_cli(["train", str(cfg), "--out", str(run), "--quiet", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _rows(run) == _rows(ref)
    a = json.loads((ref / "results.json").read_text())["eval"]
    b = json.loads((run / "results.json").read_text())["eval"]
    for k in a:
        assert abs(a[k]["psnr_rgb"] - b[k]["psnr_rgb"]) < 1e-6, k
    art = "export/model_int8.tflite"
    assert (run / art).read_bytes() == (ref / art).read_bytes()
    assert (run / "export/parity.json").read_text() == (ref / "export/parity.json").read_text()


def test_fresh_run_killed_in_an_old_folder_leaves_none_of_the_old_results(uninterrupted, tmp_path):
    """A new run over a finished one, killed early: the old results must not sit beside its config."""
    cfg, ref = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    killed = _run_cli(["train", str(cfg), "--out", str(run), "--quiet", "--set", "stage1.lr=0.0005"],
                      {"QUANTIR_FAULT": "kill:stage1:3"})
    assert killed.returncode == -signal.SIGKILL
    for name in ("results.json", "report.md", "curves.png", "export"):
        assert not (run / name).exists(), name
    assert (run / "checkpoints" / "deploy_fp32.safetensors").is_file()  # checkpoints stay (--init may use one)
    assert "lr: 0.0005" in (run / "config.yaml").read_text()


def test_nan_loss_stops_with_message_and_keeps_checkpoint(make_config, tmp_path):
    cfg = make_config()
    out = tmp_path / "run"
    res = _run_cli(["train", str(cfg), "--out", str(out), "--quiet"], {"QUANTIR_FAULT": "nan:stage1:15"})
    err = res.stderr.strip().splitlines()
    assert res.returncode == 3 and err[-1].startswith("error: stage1: loss became nan at step 15")
    assert "Traceback" not in res.stderr
    assert (out / "checkpoints" / "stage1_last.safetensors").is_file()


def test_init_from_deploy_checkpoint_runs_qat_directly(make_config, tmp_path):
    cfg = make_config()
    first = tmp_path / "first"
    assert main(["train", str(cfg), "--out", str(first), "--quiet"]) == 0
    second = tmp_path / "second"
    code = main(["train", str(cfg), "--out", str(second), "--quiet", "--init",
                 str(first / "checkpoints" / "deploy_fp32.safetensors"), "--set", "stage1.enabled=false",
                 "--set", "stage2.enabled=false"])
    assert code == 0
    assert not (second / "checkpoints" / "stage1_last.safetensors").exists()
    assert (second / "checkpoints" / "qat_final.safetensors").is_file()
    assert "No INT8 artifacts (export off)" in (second / "report.md").read_text()  # none claimed


def test_resume_refuses_a_different_config(make_config, tmp_path, capsys):
    cfg = make_config()
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--set", "qat.enabled=false",
                 "--set", "export.enabled=false"]) == 0
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--resume"]) != 0
    assert "differs from the given config" in capsys.readouterr().err


def test_ddp_two_processes(make_config, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    cfg = make_config()
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    res = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "quantir", "train",
                          str(cfg), "--out", str(out), "--quiet"], capture_output=True, text=True, env=env,
                         timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "results.json").is_file() and (out / "checkpoints" / "qat_final.safetensors").is_file()
    # rank 0 alone logs: one row per logging point, no duplicates
    rows = _rows(out)
    assert len(rows) == len(set(rows))


@pytest.mark.parametrize("form", ["training", "fused"])
def test_init_takes_a_plain_state_dict_in_either_form(tmp_path, form):
    """Weights trained elsewhere: torch.save(model.state_dict()) or safetensors, multi-branch or fused."""
    import torch
    from safetensors.torch import save_file

    from quantir import config as config_io
    from quantir.errors import ConfigError
    from quantir.models import create_model
    from quantir.train.config import TrainConfig
    from quantir.train.pipeline import _init_model
    from tests.train.conftest import tiny_config

    cfg = config_io.load(TrainConfig, tiny_config(tmp_path))
    torch.manual_seed(3)
    src = create_model(cfg.model, deploy=form == "fused", **cfg.model_options)
    weights = tmp_path / ("w.pt" if form == "training" else "w.safetensors")
    state = {"params_ema": src.state_dict()} if form == "training" else src.state_dict()
    if form == "training":
        torch.save(state, weights)  # BasicSR-style wrapper, read with weights_only
    else:
        save_file(state, str(weights))
    if form == "fused":  # fused weights need the float stages off
        with pytest.raises(ConfigError, match="disable stage1 and stage2"):
            _init_model(cfg, str(weights))
        cfg = config_io.load(TrainConfig, tiny_config(tmp_path, **{"stage1.enabled": False, "stage2.enabled": False}))
    model, is_deploy = _init_model(cfg, str(weights))
    assert is_deploy == (form == "fused")
    x = torch.rand(1, 3, 12, 12) * 255
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src.eval()(x))


def test_init_with_foreign_weights_is_one_line(tmp_path, capsys):
    import torch

    from tests.train.conftest import tiny_config

    weights = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, weights)
    out = tmp_path / "run"
    assert main(["train", str(tiny_config(tmp_path)), "--out", str(out), "--quiet", "--init", str(weights)]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "does not fit" in err[0] and "nor its fused form" in err[0]
    assert not (out / "checkpoints").exists()


def test_qat_on_the_composed_stem_from_a_state_dict_keeps_the_fp32_reference(tmp_path):
    """The QAT-only preset's path (configs/sr_x3_mobileone_qat.yaml): multi-branch weights, their own
    BN statistics (bn_recal_batches 0), QAT on the stem-composed form, 0-LSB artifacts; the report's
    FP32 model is the fused original, not the composed copy."""
    import json

    import torch
    from safetensors.torch import save_file

    from quantir.models import create_model, reparameterize_model
    from quantir.quant import checkpoint
    from tests.train.conftest import tiny_config

    opts = {"channels": 8, "blocks": 2, "branches": 2}
    torch.manual_seed(5)
    src = create_model("mobileone_sr", **opts)
    with torch.no_grad():  # BN statistics a recalibration would replace
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(weights))
    cfg = tiny_config(tmp_path, model="mobileone_sr", model_options=opts, bn_recal_batches=0,
                      **{"stage1.enabled": False, "stage2.enabled": False, "qat.compose_stem": True,
                         "export.enabled": True, "export.formats": ["tflite", "onnx"]})
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--init", str(weights)]) == 0
    deploy = checkpoint.build(checkpoint.load(out / "checkpoints" / "deploy_fp32.safetensors"))
    fused = reparameterize_model(src.eval())
    x = torch.rand(1, 3, 12, 12) * 255
    with torch.no_grad():
        assert torch.equal(deploy(x), fused(x))  # running statistics kept, no composition in the reference
    record = checkpoint.load(out / "checkpoints" / "qat_final.safetensors")
    assert record["model_cfg"]["composed_stem"] and not record["float"]["model_cfg"]["composed_stem"]
    parity = json.loads((out / "export" / "parity.json").read_text())
    assert parity["tflite"]["max_lsb"] == 0 and parity["onnx"]["max_lsb"] == 0
    assert "compose_stem: true" in (out / "config.yaml").read_text()


def test_compose_stem_on_a_network_it_cannot_compose_fails_before_training(tmp_path, capsys):
    from tests.train.conftest import tiny_config

    cfg = tiny_config(tmp_path, model_options={"stem_act": True}, **{"qat.compose_stem": True})
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "linear stem" in err[0] and not out.exists()


def test_qat_checkpoint_is_chosen_on_the_select_photos(make_config, tmp_path):
    from PIL import Image

    from quantir import config as config_io
    from quantir.quant import checkpoint
    from quantir.train.config import TrainConfig
    from quantir.train.data import qat_select_pairs
    from quantir.train.stages import validate_psnr
    from tests.conftest import natural_image

    select = tmp_path / "select"
    select.mkdir()
    for k in range(2):
        Image.fromarray(natural_image(60, 75, seed=300 + k)).save(select / f"s{k}.png")
    cfg_path = make_config(**{"qat.select_dir": str(select)})
    out = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    qat_vals = [float(r[3]) for r in _rows(out) if r[0] == "qat" and r[3]]
    assert len(qat_vals) == 2  # steps 5 and 10
    cfg = config_io.load(TrainConfig, out / "config.yaml")
    pairs = qat_select_pairs(cfg)
    assert [p.target.shape[:2] for p in pairs] == [(60, 75), (60, 75)]  # whole photos, not crops
    final = checkpoint.build_qat(checkpoint.load(out / "checkpoints" / "qat_final.safetensors"))
    assert validate_psnr(final, pairs) == pytest.approx(max(qat_vals), abs=1e-3)  # the shipped one is the best there
    assert f"chosen on the photos of {select}" in (out / "report.md").read_text()


def test_missing_select_folder_is_one_line_and_writes_nothing(make_config, tmp_path, capsys):
    out = tmp_path / "run"
    cfg_path = make_config(**{"qat.select_dir": str(tmp_path / "nowhere")})
    assert main(["train", str(cfg_path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qat.select_dir has no photos" in err[0]
    assert not out.exists()


def test_resume_accepts_a_run_saved_before_a_config_field_existed(make_config, tmp_path):
    import yaml

    from quantir import config as config_io
    from quantir.errors import ConfigError
    from quantir.train.config import TrainConfig
    from quantir.train.pipeline import _check_resume_config

    cfg = config_io.load(TrainConfig, make_config())
    run = tmp_path / "old_run"
    run.mkdir()
    saved = config_io.to_dict(cfg)
    del saved["qat"]["select_dir"]  # as written by a version without the field
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    _check_resume_config(cfg, run)  # the missing field resolves to its default: same config
    saved["qat"]["calib_batches"] += 1
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="differs from the given config"):
        _check_resume_config(cfg, run)
    saved["qat"]["gone_key"] = 1
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="no longer loads"):
        _check_resume_config(cfg, run)


def test_qat_from_a_learned_weight_start_keeps_the_fp32_reference_and_ships_bit_exact(tmp_path):
    """qat.adaround + qat.bias_correction work on a copy (the FP32 model stays the teacher and the
    report's reference) and the artifacts stay 0 LSB from fake-quant."""
    import json

    import torch
    from safetensors.torch import save_file

    from quantir.models import create_model, reparameterize_model
    from quantir.quant import checkpoint
    from tests.train.conftest import tiny_config

    torch.manual_seed(6)
    src = create_model("mobileone_sr_tiny")
    weights = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(weights))
    cfg = tiny_config(tmp_path, bn_recal_batches=0,
                      **{"stage1.enabled": False, "stage2.enabled": False, "qat.adaround": True,
                         "qat.bias_correction": True, "export.enabled": True, "export.formats": ["tflite", "onnx"]})
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--init", str(weights)]) == 0
    deploy = checkpoint.build(checkpoint.load(out / "checkpoints" / "deploy_fp32.safetensors"))
    x = torch.rand(1, 3, 12, 12) * 255
    with torch.no_grad():
        assert torch.equal(deploy(x), reparameterize_model(src.eval())(x))
    parity = json.loads((out / "export" / "parity.json").read_text())
    assert parity["tflite"]["max_lsb"] == 0 and parity["onnx"]["max_lsb"] == 0
    text = (out / "config.yaml").read_text()
    assert "adaround: true" in text and "bias_correction: true" in text
