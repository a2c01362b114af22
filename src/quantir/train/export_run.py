"""``quantir export`` of a run directory: its own typed config says where its evaluation photos are."""

from __future__ import annotations

from pathlib import Path

from quantir import config as config_io
from quantir.export.config import ExportConfig
from quantir.export.from_checkpoint import export_checkpoint
from quantir.train.config import TrainConfig


def run_config(source: Path) -> TrainConfig:
    """The resolved config a run directory was trained with (the code defaults for a bare checkpoint)."""
    saved = source / "config.yaml" if source.is_dir() else None
    return config_io.load(TrainConfig, saved) if saved is not None and saved.is_file() else TrainConfig()


def default_parity_dir(source: Path) -> Path | None:
    """The run's evaluation photos, else the default evaluation folder, if either exists."""
    for folder in (run_config(source).data.eval_dir, TrainConfig().data.eval_dir):
        if folder and Path(folder).is_dir():
            return Path(folder)
    return None


def export_run(source: str | Path, out_dir: str | Path | None = None, options: ExportConfig = ExportConfig(),
               ptq: str | None = None, calib_dir: str | None = None, parity_dir: str | Path | None = None,
               parity_limit: int | None = 16, command: str | None = None) -> dict:
    source = Path(source)
    parity = Path(parity_dir) if parity_dir else default_parity_dir(source)
    return export_checkpoint(source, out_dir, options, ptq, calib_dir, parity, parity_limit, command)
