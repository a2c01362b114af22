import pytest
import yaml

from quantir import config as C
from quantir.errors import ConfigError
from quantir.train.config import TrainConfig


def test_yaml_overrides_merge_with_nested_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"qat": {"train": {"steps": 7}}, "stage1": {"loss": {"l1": 0.5}}}))
    cfg = C.load(TrainConfig, p)
    assert cfg.qat.train.steps == 7 and cfg.qat.train.lr == TrainConfig().qat.train.lr
    assert cfg.stage1.loss.l1 == 0.5 and cfg.stage1.steps == TrainConfig().stage1.steps


@pytest.mark.parametrize("data,needle", [
    ({"stage1": {"stpes": 3}}, "unknown key stpes in stage1"),
    ({"stage1": {"steps": "many"}}, "stage1.steps: expected an integer"),
    ({"stage1": {"lr": "1e-3x"}}, "stage1.lr: expected a number"),
    ({"task": "denoise"}, "task: 'denoise' is not one of ['sr', 'enhance']"),
    ({"data": {"layout": "div2k"}}, "data.root is required"),
    ({"data": {"layout": "zip"}}, "data.layout: 'zip' is not one of ['folder', 'div2k', 'dped']"),
    ({"stage2": {"schedule": "linear"}}, "stage2.schedule: 'linear' is not one of"),
    ({"qat": {"quant": {"act_bits": 1}}}, "qat.quant.act_bits and weight_bits must be in 2..8"),
    ({"qat": {"quant": {"odm": {"mismatch_weight": -1}}}}, "qat.quant.odm.mismatch_weight must be >= 0"),
    ({"export": {"formats": ["tflite", "tf"]}}, "export.formats[1]: 'tf' is not one of ['tflite', 'onnx']"),
    ({"qat": {"compose_stem": True, "equalize_skip": 0.5}}, "compose_stem removes the skip tensors"),
    ({"qat": {"direct_split": 16.0}}, "qat.direct_split needs qat.compose_stem"),
    ({"qat": {"compose_stem": True, "direct_split": -1.0}}, "must be >= 0"),
    ({"bn_recal_batches": -1}, "bn_recal_batches must be >= 0"),
    ({"qat": {"train": {"ema": 1.0}}}, "qat.train.ema must be in [0, 1)"),
    ({"qat": {"select_dir": "data/samples/eval"}}, "qat.select_dir is the folder of data.eval_dir"),
    ({"qat": {"select_dir": "data/samples/train/"}}, "qat.select_dir is the folder of data.train_dir"),
    ({"qat": {"adaround": True, "quant": {"weight_clip_percentile": 99.0}}},
     "qat.adaround and qat.bias_correction need every conv on the max|W| grid"),
])
def test_bad_configs_fail_with_one_line(tmp_path, data, needle):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        C.load(TrainConfig, p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_overrides_and_round_trip(tmp_path):
    over = C.parse_overrides(["qat.train.steps=3", "model=abpn", "data.patch=24"])
    cfg = C.load(TrainConfig, None, over)
    assert (cfg.qat.train.steps, cfg.model, cfg.data.patch) == (3, "abpn", 24)
    C.dump(cfg, tmp_path / "out.yaml")
    assert C.load(TrainConfig, tmp_path / "out.yaml") == cfg


def test_exponent_numbers_without_a_dot_are_numbers():
    """PyYAML (YAML 1.1) reads 2e-5 as text; in a float field it means the number, in --set and in files."""
    cfg = C.load(TrainConfig, None, C.parse_overrides(["qat.train.lr=2e-5", "stage1.lr=1E-3"]))
    assert (cfg.qat.train.lr, cfg.stage1.lr) == (2e-5, 1e-3)
    with pytest.raises(ConfigError, match="stage1.steps: expected an integer"):
        C.load(TrainConfig, None, C.parse_overrides(["stage1.steps=1e3"]))  # an integer field stays strict


def test_presets_load():
    from pathlib import Path

    presets = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert len(presets) >= 6
    for p in presets:
        C.load(TrainConfig, p)


def test_closed_sets_are_checked_in_code_too():
    """A config built in Python (no from_dict) rejects a value outside its Literal as well."""
    from quantir.quant.config import ODMConfig
    from quantir.train.config import StageConfig

    with pytest.raises(ConfigError, match=r"StageConfig.schedule: 'linear' is not one of"):
        StageConfig(schedule="linear")
    with pytest.raises(ConfigError, match=r"ODMConfig.granularity"):
        ODMConfig(granularity="channel")
