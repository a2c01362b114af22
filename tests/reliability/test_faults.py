"""Faults: a full disk mid-checkpoint, and two processes writing one folder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from quantir.quant import checkpoint
from tests.conftest import natural_image
from tests.train.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(cli, tmp_path, monkeypatch):
    import safetensors.torch

    cfg = tiny_config(tmp_path, **{"qat.enabled": False, "stage2.enabled": False})
    run = tmp_path / "run"
    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def flaky_save(tensors, filename, metadata=None):
        calls["n"] += "stage1_last" in filename
        if "stage1_last" in filename and calls["n"] == 2:  # the write at step 20 (ckpt_every 10)
            with open(filename, "wb") as f:
                f.write(b"half a header")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky_save)
    code, errors, _ = cli("train", cfg, "--out", run, "--quiet")
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0]
    last = run / "checkpoints" / "stage1_last.safetensors"
    assert checkpoint.load(last)["step"] == 10  # the previous checkpoint, intact
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    code, errors, _ = cli("train", cfg, "--out", run, "--quiet", "--resume")
    assert code == 0 and not errors and (run / "results.json").is_file()


def test_two_processes_writing_one_folder_never_mix_files(tmp_path, sr_model):
    src = tmp_path / "in"
    src.mkdir()
    for k in range(6):
        Image.fromarray(natural_image(40, 48, seed=k)).save(src / f"p{k}.png")
    ref = tmp_path / "ref"
    cmd = [sys.executable, "-m", "quantir", "upscale", str(src), "--model", str(sr_model), "--quiet", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    assert subprocess.run(cmd + ["-o", str(ref)], env=env, capture_output=True).returncode == 0
    shared = tmp_path / "shared"
    procs = [subprocess.Popen(cmd + ["-o", str(shared), "--overwrite"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-500:]
    assert sorted(p.name for p in shared.iterdir()) == sorted(p.name for p in ref.iterdir())
    for f in ref.iterdir():
        assert np.array_equal(np.asarray(Image.open(shared / f.name)), np.asarray(Image.open(f)))
