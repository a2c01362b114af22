"""Latency the way the Mobile AI challenge reports it, plus the MAI 2026 score.

Models are timed round-robin (interleaved) after a warm-up, so machine noise hits every model
alike; median and min of the raw ``invoke`` (input already quantized) are reported. The score is
2^(2 * PSNR) / (C * ms) with C = 1.16e16, fitted to the MAI 2026 leaderboard (docs/papers.md 4.2).
Timing belongs in benchmarks, never in tests.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from quantir.evaluate.predictors import TorchPredictor, load_model

MAI_C = 1.16e16


def mai_score(psnr_db: float, ms: float) -> float:
    return 2.0 ** (2.0 * psnr_db) / (MAI_C * ms)


class _Timed:
    def __init__(self, spec, hw: tuple[int, int], threads: int):
        self.times: list[float] = []
        if isinstance(spec, tuple):  # (label, zero-arg callable, MACs per input pixel or None)
            self.name, self.fn, self.macs_per_pixel = spec
            self.backend = "custom"
            return
        path = Path(spec)
        self.name = path.name
        h, w = hw
        rng = np.random.default_rng(0)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        model = load_model(path, threads=threads)
        self.backend = model.backend
        if isinstance(model, TorchPredictor):
            import torch

            from quantir.models.apply import to_model_units
            from quantir.models.protocol import RestorationModel
            from quantir.models.stats import macs_per_pixel

            x = to_model_units(torch.from_numpy(img).permute(2, 0, 1)[None], model.info.pixel_max)
            net = model.model

            def run():
                with torch.no_grad():
                    net(x)

            self.fn = run
            self.macs_per_pixel = macs_per_pixel(net) if isinstance(net, RestorationModel) else None
            return
        if model.fixed_hw is not None and model.fixed_hw != (h, w):
            raise ValueError(f"{path.name} has a fixed input of {model.fixed_hw[0]}x{model.fixed_hw[1]}, not {h}x{w}")
        m = model.multiple
        if h % m or w % m:
            raise ValueError(f"{path.name} needs sizes divisible by {m}")
        x = model.quantize(img[None])
        self.fn = lambda: model.invoke(x)
        self.macs_per_pixel = model.meta.get("macs_per_pixel")


def benchmark(models: list, hw: tuple[int, int] = (360, 640), threads: int = 2, runs: int = 20,
              warmup: int = 3, psnr: dict[str, float] | None = None) -> list[dict]:
    """Time model files (or ``(label, fn, macs_per_pixel)`` tuples) round-robin; one row per model."""
    timed = [_Timed(m, hw, threads) for m in models]
    for t in timed:
        for _ in range(warmup):
            t.fn()
    for _ in range(runs):
        for t in timed:
            start = time.perf_counter()
            t.fn()
            t.times.append((time.perf_counter() - start) * 1000.0)
    rows = []
    for spec, t in zip(models, timed):
        med, best = statistics.median(t.times), min(t.times)
        label = spec[0] if isinstance(spec, tuple) else spec
        row = {"model": label, "backend": t.backend, "hw": list(hw), "threads": threads, "runs": runs,
               "median_ms": med, "min_ms": best}
        if t.macs_per_pixel:
            gmac = t.macs_per_pixel * hw[0] * hw[1] / 1e9
            row.update(gmac=gmac, gmac_per_s=gmac / (med / 1000.0))
        p = (psnr or {}).get(label)
        if p is not None:
            row.update(psnr_db=p, mai_score=mai_score(p, med))
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| model | backend | median ms | min ms | GMAC | GMAC/s | PSNR | MAI score |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gm = f"{r['gmac']:.2f}" if "gmac" in r else "-"
        gs = f"{r['gmac_per_s']:.1f}" if "gmac_per_s" in r else "-"
        ps = f"{r['psnr_db']:.3f}" if "psnr_db" in r else "-"
        sc = f"{r['mai_score']:.3g}" if "mai_score" in r else "-"
        lines.append(f"| {Path(r['model']).name} | {r['backend']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{gm} | {gs} | {ps} | {sc} |")
    return "\n".join(lines)
