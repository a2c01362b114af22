"""Parity report: does the artifact compute what training (fake-quant) computed?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from quantir.evaluate.metrics import psnr


@torch.no_grad()
def torch_uint8(model: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """Run a float or fake-quant torch model on uint8 HxWx3; returns float output in 0..255 units."""
    pixel_max = model.info.pixel_max
    x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None].float() * (pixel_max / 255.0)
    y = model(x)[0].permute(1, 2, 0).numpy() * (255.0 / pixel_max)
    return np.clip(y, 0.0, 255.0)


def compare(artifact_out: list[np.ndarray], fakequant_out: list[np.ndarray], float_out: list[np.ndarray]) -> dict:
    """LSB statistics of uint8 artifact outputs against the fake-quant levels, and PSNRs."""
    diffs = np.concatenate([np.abs(a.astype(np.int16) - np.round(f).astype(np.int16)).ravel()
                            for a, f in zip(artifact_out, fakequant_out)])
    return {
        "max_lsb": int(diffs.max()) if diffs.size else 0,
        "frac_off_by_one": float(np.mean(diffs == 1)) if diffs.size else 0.0,
        "frac_off": float(np.mean(diffs > 0)) if diffs.size else 0.0,
        "psnr_vs_fakequant_db": float(np.mean([min(psnr(a, np.round(f)), 100.0)
                                               for a, f in zip(artifact_out, fakequant_out)])),
        "psnr_vs_float_db": float(np.mean([min(psnr(a.astype(np.float64), f), 100.0)
                                           for a, f in zip(artifact_out, float_out)])),
        "n_images": len(artifact_out),
    }


def parity_report(runtimes: dict, fakequant: torch.nn.Module, float_model: torch.nn.Module,
                  images: Sequence[np.ndarray], op_checks: dict) -> dict:
    """``runtimes``: backend -> Runtime; ``op_checks``: backend -> (all_int8, non_int8_ops, io_dtype)."""
    fq = [torch_uint8(fakequant, im) for im in images]
    fl = [torch_uint8(float_model, im) for im in images]
    report = {}
    for backend, rt in runtimes.items():
        outs = [rt.run(im) for im in images]
        row = compare(outs, fq, fl)
        all_int8, non_int8, io_dtype = op_checks[backend]
        row.update(all_int8=bool(all_int8), non_int8_ops=list(non_int8), io_dtype=io_dtype)
        report[backend] = row
    report["fakequant_vs_float_psnr_db"] = float(np.mean([min(psnr(np.round(a), b), 100.0) for a, b in zip(fq, fl)]))
    return report


def format_parity(report: dict) -> str:
    lines = ["| backend | max LSB | off by 1 | PSNR vs fake-quant | PSNR vs FP32 | all int8 | I/O |",
             "|---|---:|---:|---:|---:|---|---|"]
    for backend, r in report.items():
        if not isinstance(r, dict):
            continue
        lines.append(f"| {backend} | {r['max_lsb']} | {100 * r['frac_off_by_one']:.2f}% | "
                     f"{r['psnr_vs_fakequant_db']:.2f} dB | {r['psnr_vs_float_db']:.2f} dB | "
                     f"{'yes' if r['all_int8'] else 'NO: ' + ', '.join(r['non_int8_ops'])} | {r['io_dtype']} |")
    return "\n".join(lines)
