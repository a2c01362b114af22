"""The benchmarks' run_training: reuse a finished run, resume a killed one, retrain on another config."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from quantir import config as config_io
from quantir.train.config import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
common = pytest.importorskip("common")


@pytest.fixture
def calls(monkeypatch):
    """A stand-in for train(): records how it was called and writes a run's files."""
    seen = []

    def fake_train(cfg, run_dir, init=None, progress=True, resume=False):
        seen.append(resume)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_io.dump(cfg, run_dir / "config.yaml")
        (run_dir / "state.json").write_text("{}")
        (run_dir / "results.json").write_text(json.dumps({"eval": {"run": len(seen)}}))

    monkeypatch.setattr("quantir.train.pipeline.train", fake_train)
    return seen


def test_finished_run_is_reused_killed_run_resumed_other_config_retrained(tmp_path, calls):
    cfg, run = TrainConfig(), tmp_path / "run"
    assert common.run_training(cfg, run)["eval"] == {"run": 1} and calls == [False]
    assert common.run_training(cfg, run)["eval"] == {"run": 1} and calls == [False]  # reused
    (run / "results.json").unlink()  # killed before the end: config and state, no results
    common.run_training(cfg, run)
    assert calls == [False, True]
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert common.run_training(other, run)["eval"] == {"run": 3} and calls == [False, True, False]


def test_a_run_of_another_thread_count_is_refused_not_retrained(tmp_path, calls):
    cfg, run = TrainConfig(threads=1), tmp_path / "run"
    common.run_training(cfg, run)
    with pytest.raises(SystemExit, match="trained with threads=1; pass --threads 1"):
        common.run_training(dataclasses.replace(cfg, threads=2), run)
    assert calls == [False] and (run / "results.json").is_file()
