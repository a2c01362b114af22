"""Parity report: does the artifact compute what training (fake-quant) computed?"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from quantir.data.metrics import psnr
from quantir.models.apply import run_levels

PSNR_CAP_DB = 100.0  # identical images have infinite PSNR; the report caps it so means stay finite


@dataclasses.dataclass(frozen=True)
class BackendParity:
    """One artifact against the fake-quant model (LSB statistics on uint8 outputs) and the FP32 model."""

    max_lsb: int
    frac_off_by_one: float
    frac_off: float
    psnr_vs_fakequant_db: float
    psnr_vs_float_db: float
    n_images: int
    all_int8: bool
    non_int8_ops: tuple[str, ...]
    io_dtype: str
    float_op_counts: dict = dataclasses.field(default_factory=dict)  # op -> how many run in float (TFLite)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), non_int8_ops=list(self.non_int8_ops))

    @property
    def int8_status(self) -> str:
        """'yes', or which ops are not int8 ('no: MEAN x10, RSQRT x5 in float')."""
        if self.all_int8:
            return "yes"
        counts = self.float_op_counts or {}
        return "no: " + ", ".join(f"{op} x{counts[op]}" if op in counts else op for op in self.non_int8_ops) + " in float"


@dataclasses.dataclass(frozen=True)
class ParityReport:
    backends: dict[str, BackendParity]
    fakequant_vs_float_psnr_db: float

    def to_dict(self) -> dict:
        """The parity.json layout: one mapping per backend, then the fake-quant vs FP32 PSNR."""
        out: dict = {name: b.to_dict() for name, b in self.backends.items()}
        out["fakequant_vs_float_psnr_db"] = self.fakequant_vs_float_psnr_db
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ParityReport:
        backends = {k: BackendParity(**dict(v, non_int8_ops=tuple(v["non_int8_ops"])))
                    for k, v in data.items() if isinstance(v, dict)}
        return cls(backends, float(data["fakequant_vs_float_psnr_db"]))


def _capped(a: np.ndarray, b: np.ndarray) -> float:
    return min(psnr(a, b), PSNR_CAP_DB)


def compare(artifact_out: list[np.ndarray], fakequant_out: list[np.ndarray], float_out: list[np.ndarray]) -> dict:
    """LSB statistics of uint8 artifact outputs against the fake-quant levels, and PSNRs."""
    diffs = np.concatenate([np.abs(a.astype(np.int16) - np.round(f).astype(np.int16)).ravel()
                            for a, f in zip(artifact_out, fakequant_out)])
    return {
        "max_lsb": int(diffs.max()) if diffs.size else 0,
        "frac_off_by_one": float(np.mean(diffs == 1)) if diffs.size else 0.0,
        "frac_off": float(np.mean(diffs > 0)) if diffs.size else 0.0,
        "psnr_vs_fakequant_db": float(np.mean([_capped(a, np.round(f)) for a, f in zip(artifact_out, fakequant_out)])),
        "psnr_vs_float_db": float(np.mean([_capped(a.astype(np.float64), f) for a, f in zip(artifact_out, float_out)])),
        "n_images": len(artifact_out),
    }


def parity_report(runtimes: dict, fakequant: torch.nn.Module, float_model: torch.nn.Module,
                  images: Sequence[np.ndarray], op_checks: dict) -> ParityReport:
    """``runtimes``: backend -> Runtime; ``op_checks``: backend -> (all_int8, non_int8_ops, io_dtype[, counts])."""
    fq = [run_levels(fakequant, im) for im in images]
    fl = [run_levels(float_model, im) for im in images]
    backends = {}
    for backend, rt in runtimes.items():
        row = compare([rt.run(im) for im in images], fq, fl)
        all_int8, non_int8, io_dtype, *counts = op_checks[backend]
        backends[backend] = BackendParity(**row, all_int8=bool(all_int8), non_int8_ops=tuple(non_int8),
                                          io_dtype=io_dtype, float_op_counts=dict(counts[0]) if counts else {})
    return ParityReport(backends, float(np.mean([_capped(np.round(a), b) for a, b in zip(fq, fl)])))


def format_parity(report: ParityReport) -> str:
    lines = ["| backend | max LSB | off by 1 | PSNR vs fake-quant | PSNR vs FP32 | all int8 | I/O |",
             "|---|---:|---:|---:|---:|---|---|"]
    for backend, r in report.backends.items():
        lines.append(f"| {backend} | {r.max_lsb} | {100 * r.frac_off_by_one:.2f}% | "
                     f"{r.psnr_vs_fakequant_db:.2f} dB | {r.psnr_vs_float_db:.2f} dB | "
                     f"{r.int8_status} | {r.io_dtype} |")
    return "\n".join(lines)
