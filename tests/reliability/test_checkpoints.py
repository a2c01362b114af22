"""Checkpoints: no code runs from a model file, and a file that lacks what it needs gets one line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from quantir.quant import checkpoint
from tests.conftest import natural_image
from tests.train.conftest import tiny_config


class _Payload:
    """Unpickling this creates a folder: the stand-in for arbitrary code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil(path, marker):
    torch.save({"kind": "float", "model_name": "abpn", "x": _Payload(marker)}, path)  # a well-formed torch file
    return path


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The test below can fail: torch.load(weights_only=False), quantir 0.1's loader, runs it."""
    marker = tmp_path / "pwned"
    torch.load(_evil(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pth"])
def test_crafted_pickle_runs_nothing_anywhere(cli, tmp_path, suffix):
    marker = tmp_path / "pwned"
    evil = _evil(tmp_path / f"evil{suffix}", marker)
    photo = tmp_path / "p.png"
    Image.fromarray(natural_image(24, 24)).save(photo)
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(natural_image(48, 48)).save(data / "a.png")
    commands = [
        ["upscale", photo, "-o", tmp_path / "o.png", "--backend", "torch", "--model", evil, "--quiet"],
        ["export", evil, "--out", tmp_path / "exp"],
        ["eval", evil, "--data", data],
        ["bench", evil, "--hw", "24x24", "--runs", "1", "--warmup", "0"],
        ["train", tiny_config(tmp_path), "--out", tmp_path / "run", "--init", evil, "--quiet"],
        ["convert-checkpoint", evil],  # without --trust
    ]
    for args in commands:
        code, errors, _ = cli(*args)
        assert code != 0 and len(errors) == 1, (args[0], errors)
        assert not marker.exists(), f"{args[0]} ran code from the checkpoint"
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "exp").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_legacy_file_names_the_conversion_command(cli, tmp_path):
    code, errors, _ = cli("eval", _evil(tmp_path / "old.pt", tmp_path / "m"), "--data", tmp_path)
    assert code == 2 and "quantir convert-checkpoint" in errors[0] and "--trust" in errors[0]


def test_trusted_legacy_checkpoint_converts_and_loads(cli, tmp_path):
    from quantir.models import create_model

    model = create_model("mobileone_sr_tiny")
    old = tmp_path / "old.pt"
    torch.save(checkpoint.float_record(model), old)  # quantir 0.1's format
    code, errors, out = cli("convert-checkpoint", old, "--trust")
    assert code == 0 and not errors
    new = tmp_path / "old.safetensors"
    assert out.strip() == str(new)
    rebuilt = checkpoint.build(checkpoint.load(new))
    x = torch.rand(1, 3, 12, 12) * 255
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_round_trip_keeps_every_value(tmp_path):
    rng = np.random.default_rng(0)
    np.random.seed(3)
    state = np.random.get_state()
    expected = np.random.rand(3)
    obj = {"t": torch.arange(6.0).reshape(2, 3), "i": torch.tensor([1, 2], dtype=torch.int32), "e": torch.empty(0),
           "n": None, "f": 1.5, "s": "x", "b": True, "l": [1, (2, 3)], 7: {"deep": torch.ones(1)},
           "rng": state, "arr": rng.integers(0, 9, (2, 2)).astype(np.uint32)}
    checkpoint.save(obj, tmp_path / "c.safetensors")
    back = checkpoint.load(tmp_path / "c.safetensors")
    assert back.keys() == obj.keys()
    assert torch.equal(back["t"], obj["t"]) and back["i"].dtype == torch.int32 and back["e"].numel() == 0
    assert back["l"] == [1, (2, 3)] and torch.equal(back[7]["deep"], torch.ones(1))
    np.random.set_state(back["rng"])  # the numpy RNG state survives exactly
    assert np.array_equal(np.random.rand(3), expected)
    assert np.array_equal(back["arr"], obj["arr"]) and back["arr"].dtype == np.uint32


def test_checkpoint_missing_keys_gets_one_line(cli, tmp_path):
    path = tmp_path / "partial.safetensors"
    checkpoint.save({"kind": "float", "model_name": "abpn"}, path)
    code, errors, _ = cli("export", path, "--out", tmp_path / "x")
    assert code == 2 and len(errors) == 1
    assert "'model_cfg'" in errors[0] and "'state_dict'" in errors[0]


def test_checkpoint_with_foreign_weights_gets_one_line(cli, tmp_path):
    from quantir.models import create_model

    rec = checkpoint.float_record(create_model("mobileone_sr_tiny"))
    rec["state_dict"] = {"not.a.key": torch.zeros(1)}
    path = tmp_path / "foreign.safetensors"
    checkpoint.save(rec, path)
    code, errors, _ = cli("eval", path, "--data", tmp_path)
    assert code == 2 and len(errors) == 1 and "do not match the model" in errors[0]


def test_garbage_and_plain_safetensors_files(cli, tmp_path):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    for path in (garbage, plain):
        code, errors, _ = cli("eval", path, "--data", tmp_path)
        assert code == 2 and len(errors) == 1 and str(path) in errors[0]


def test_checkpoint_with_weights_of_another_shape_gets_one_line(cli, tmp_path):
    from quantir.models import create_model

    rec = checkpoint.float_record(create_model("mobileone_sr_tiny"))
    key = next(iter(rec["state_dict"]))
    rec["state_dict"] = {**rec["state_dict"], key: torch.zeros(1)}
    path = tmp_path / "reshaped.safetensors"
    checkpoint.save(rec, path)
    code, errors, _ = cli("eval", path, "--data", tmp_path)
    assert code == 2 and len(errors) == 1
    assert "do not match the model" in errors[0] and "size mismatch" in errors[0] and key in errors[0]
