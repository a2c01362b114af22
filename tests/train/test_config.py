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
    ({"task": "denoise"}, "task must be sr or enhance"),
    ({"data": {"layout": "div2k"}}, "data.root is required"),
    ({"qat": {"quant": {"act_bits": 1}}}, "bit widths"),
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


def test_presets_load():
    from pathlib import Path

    presets = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert len(presets) >= 6
    for p in presets:
        C.load(TrainConfig, p)
