"""Shared helpers for the benchmark scripts: data settings, runs, artifact evaluation, JSON I/O."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from quantir import config as config_io
from quantir.data.datasets import PairSequence
from quantir.evaluate.evaluate import evaluate
from quantir.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]  # quantir itself comes from the installed package (make venv)


@dataclasses.dataclass
class BenchSettings:
    out: Path
    quick: bool = False
    div2k: str | None = None
    dped: str | None = None
    samples: Path = ROOT / "data" / "samples"
    threads: int = 2
    smoke: bool = False  # a few steps everywhere: checks the code paths, the numbers mean nothing
    models: tuple[str, ...] | None = None  # SR tables: only these networks (one parallel job's share)
    choices: bool | None = None  # ODM open-choice rows; default: full mode only
    seeds: int = 1  # ODM open-choice rows: QAT seeds per setting (mean and spread reported)
    variants: tuple[str, ...] | None = None  # enhancement table: only these variants (v0..v4)

    def steps(self, full: int, quick: int) -> int:
        return 12 if self.smoke else (quick if self.quick else full)

    def selected(self, models: dict) -> dict:
        return {k: v for k, v in models.items() if self.models is None or k in self.models}

    def data_overrides(self, task: str) -> dict:
        if task == "sr" and self.div2k:
            return {"layout": "div2k", "root": self.div2k, "eval_limit": 20 if self.quick else None}
        if task == "enhance" and self.dped:
            return {"layout": "dped", "root": self.dped, "eval_limit": 200 if self.quick else None}
        return {"train_dir": str(self.samples / "train"), "eval_dir": str(self.samples / "eval"), "val_holdout": 4}

    def calib_dir(self, task: str) -> str:
        """Photos PTQ calibrates on: always a training split, never the evaluation photos."""
        return self._split_dir(task, evaluation=False)

    def parity_dir(self, task: str) -> str:
        """Photos the artifact-vs-fake-quant parity is measured on (evaluation split)."""
        return self._split_dir(task, evaluation=True)

    def _split_dir(self, task: str, evaluation: bool) -> str:
        from quantir.data.datasets import div2k_dirs, dped_dirs

        if task == "sr" and self.div2k:
            return str(div2k_dirs(self.div2k, "valid" if evaluation else "train", 3)[0])
        if task == "enhance" and self.dped:
            return str(dped_dirs(self.dped, "iphone", "test" if evaluation else "train")[0])
        return str(self.samples / ("eval" if evaluation else "train"))

    def data_description(self, task: str) -> str:
        if task == "sr" and self.div2k:
            return f"DIV2K at {self.div2k} (train: DIV2K_train_HR; evaluation: DIV2K_valid_HR)"
        if task == "enhance" and self.dped:
            return f"DPED at {self.dped} (iphone; evaluation: the test patches)"
        return "sample photos (train: Debian wallpapers; evaluation: 16 photos from PyPI wheels)"


def standalone(run, *data_flags: str) -> BenchSettings:
    """Run one benchmark script on its own: --out, --quick, --threads, plus its --div2k / --dped."""
    import argparse

    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench-runs")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", help="SR tables: only these networks")
    ap.add_argument("--choices", action="store_true", help="ODM: also the open-choice rows in quick mode")
    ap.add_argument("--seeds", type=int, default=1, help="ODM open-choice rows: QAT seeds per setting")
    for flag in data_flags:
        ap.add_argument(f"--{flag}")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    settings = BenchSettings(Path(a.out), a.quick, threads=a.threads, models=a.models, choices=a.choices or None,
                             seeds=a.seeds, **{f: getattr(a, f) for f in data_flags})
    run(settings)
    return settings


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "platform": platform.platform()}


def make_config(settings: BenchSettings, task: str, base: dict) -> TrainConfig:
    data = config_io.merge(base.get("data", {}), settings.data_overrides(task))
    return config_io.from_dict(TrainConfig, dict(base, task=task, data=data, threads=settings.threads))


def run_training(cfg: TrainConfig, run_dir: Path, init: str | None = None) -> dict:
    """Train (or reuse a finished run with the same config, or resume an interrupted one) and return
    its results.json. A run is finished when it has results.json: a fresh run removes the previous
    one's before it starts, so a killed run never shows another's numbers."""
    from quantir.train.pipeline import train

    results = run_dir / "results.json"
    saved = run_dir / "config.yaml"
    # Compare resolved configs: a field added since the run was saved takes its default on both sides.
    old = config_io.to_dict(config_io.load(TrainConfig, saved)) if saved.is_file() else None
    new = config_io.to_dict(cfg)
    same = old == new
    if old is not None and not same and {k for k in new if old.get(k) != new.get(k)} == {"threads"}:
        # Only the thread count differs: almost always a summary call made with another --threads than
        # the runs (which then trained differently). Retraining would silently replace hours of runs.
        raise SystemExit(f"{run_dir} was trained with threads={old['threads']}; pass --threads {old['threads']} "
                         f"to reuse it (or delete the folder to retrain with threads={new['threads']})")
    if same and results.is_file():
        print(f"  reusing {run_dir}", flush=True)
        return json.loads(results.read_text())
    resume = same and (run_dir / "state.json").is_file()  # killed (e.g. a session's end): go on from its last checkpoint
    print(f"  {'resuming' if resume else 'training'} {run_dir.name} ...", flush=True)
    from quantir.errors import ModelFileError

    try:
        train(cfg, run_dir, init=init, progress=False, resume=resume)
    except ModelFileError as err:  # export refused: the run's results.json records why
        print(f"  {err}", flush=True)
    return json.loads(results.read_text())


def eval_artifact(path: Path, pairs: PairSequence, border: int) -> dict:
    from quantir.export.runtime import load_runtime

    r = evaluate(load_runtime(path).run, pairs, border)
    return {k: v for k, v in r.items() if k != "per_image"}


def eval_fn(fn, pairs, border: int) -> dict:
    r = evaluate(fn, pairs, border)
    return {k: v for k, v in r.items() if k != "per_image"}


def save_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")


def update_json(path: Path, update) -> None:
    """Read-modify-write under a file lock: parallel benchmark jobs add their rows to one file."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_json(path) or {}
        update(data)
        save_json(data, path)


def merge_entry(path: Path, result: dict, name: str, order, sections=("models",)) -> None:
    """Add one job's ``result[section][name]`` entries to the shared result file, keeping each
    section in ``order`` (jobs finish in any order); other top-level keys come from ``result``."""
    def update(shared: dict) -> None:
        shared.update({k: v for k, v in result.items() if k not in sections})
        for section in sections:
            if name in result.get(section, {}):
                both = dict(shared.get(section, {}), **{name: result[section][name]})
                shared[section] = {k: both[k] for k in order if k in both}
    update_json(path, update)


def load_json(path: Path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def load_enhance_table(bench_dir: Path) -> dict:
    """Table 3's enhance.json of ``bench_dir``; a missing file is one line and exit 1."""
    table = load_json(Path(bench_dir) / "enhance.json")
    if not table:
        raise SystemExit(f"{bench_dir}/enhance.json missing: train the table first (run_all.py --only enhance)")
    return table


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
    except OSError:
        return "unknown"


def uint8_predictor(model):
    from functools import partial

    from quantir.models.apply import run_uint8

    return partial(run_uint8, model)
