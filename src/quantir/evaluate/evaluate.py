"""Score a predictor (any uint8 RGB -> uint8 RGB callable) on evaluation pairs."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from quantir.data.datasets import Pair
from quantir.data.metrics import image_metrics, mean_metrics
from quantir.utils import atomic_write_text

Predictor = Callable[[np.ndarray], np.ndarray]

def evaluate(predict: Predictor, pairs: Sequence[Pair], border: int = 0, progress: bool = False,
             desc: str = "eval") -> dict:
    """Mean PSNR/SSIM (RGB and Y) over ``pairs``; ``border`` is the Y-metric shave (the SR scale)."""
    iterator = range(len(pairs))
    bar = None
    if progress:
        from tqdm import tqdm

        iterator = bar = tqdm(iterator, desc=desc, unit="img", leave=False, disable=None)  # None: off when not a TTY
    try:
        rows, per_image = _score_all(predict, pairs, border, iterator)
    finally:
        if bar is not None:
            bar.close()
    result = mean_metrics(rows)
    result["n_images"] = len(rows)
    result["per_image"] = per_image
    return result


def _score_all(predict, pairs, border, iterator):
    rows, per_image = [], {}
    for i in iterator:
        pair = pairs[i]
        pred = predict(pair.input)
        if pred.shape != pair.target.shape:
            raise ValueError(f"{pair.name}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                             f"target is {pair.target.shape[1]}x{pair.target.shape[0]}")
        m = image_metrics(pred, pair.target, border)
        rows.append(m)
        per_image[pair.name] = m
    return rows, per_image


def write_json(result: dict, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def format_table(rows: dict[str, dict], baseline: str | None = None) -> str:
    """Markdown table, one row per named result, with deltas to ``baseline`` if given."""
    head = "| model | PSNR-RGB | PSNR-Y | SSIM-Y |" + (" dPSNR-RGB |" if baseline else "")
    sep = "|---|---:|---:|---:|" + ("---:|" if baseline else "")
    lines = [head, sep]
    base = rows.get(baseline) if baseline else None
    for name, r in rows.items():
        line = f"| {name} | {r['psnr_rgb']:.3f} | {r['psnr_y']:.3f} | {r['ssim_y']:.4f} |"
        if base is not None:
            line += f" {r['psnr_rgb'] - base['psnr_rgb']:+.3f} |"
        lines.append(line)
    return "\n".join(lines)
