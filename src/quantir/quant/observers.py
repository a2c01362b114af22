"""Range setting for activations: one observer, four calibration methods.

``RangeObserver`` keeps a running min/max, an EMA of per-batch min/max, the
per-batch low/high percentiles and a bounded random sample of values. Its
``calculate_qparams`` turns whichever statistic the chosen method needs into an
int8 (or b-bit) affine scale and zero point, so PTQ calibration and the QAT
range initialisation share one implementation.
"""

from __future__ import annotations

import enum

import torch
from torchao.quantization.pt2e.observer import UniformQuantizationObserverBase

from quantir.numerics import SCALE_FLOOR


class RangeMethod(str, enum.Enum):
    MINMAX = "minmax"
    EMA = "ema"
    PERCENTILE = "percentile"
    MSE = "mse"


def affine_qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, eps: float = SCALE_FLOOR):
    """Scale/zero point for an asymmetric range that always contains 0 (so ReLU zeros stay exact)."""
    lo = torch.clamp(lo, max=0.0).float()
    hi = torch.clamp(hi, min=0.0).float()
    scale = torch.clamp((hi - lo) / float(qmax - qmin), min=eps)
    zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale.reshape(1), zero_point.reshape(1)


def fake_quant_mse(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    scale, zp = affine_qparams(lo, hi, qmin, qmax)
    q = torch.fake_quantize_per_tensor_affine(values, scale, zp, qmin, qmax)
    return torch.mean((q - values) ** 2)


def mse_optimal_range(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int,
                      steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid search of the clipping range that minimises the fake-quant MSE on ``values``.

    Each bound is shrunk independently along a coarse-to-fine grid of fractions of the observed
    range; the pair with the lowest mean squared quantization error wins.
    """
    best = (fake_quant_mse(values, lo, hi, qmin, qmax), lo, hi)
    fractions = torch.linspace(0.3, 1.0, steps)
    for a in fractions:
        for b in fractions:
            cand_lo, cand_hi = lo * a, hi * b
            err = fake_quant_mse(values, cand_lo, cand_hi, qmin, qmax)
            if err < best[0]:
                best = (err, cand_lo, cand_hi)
    return best[1], best[2]


class RangeObserver(UniformQuantizationObserverBase):
    """Per-tensor affine observer implementing min-max, EMA min-max, percentile and MSE ranges."""

    def __init__(self, method: RangeMethod | str = RangeMethod.MINMAX, percentile: float = 99.99,
                 averaging_constant: float = 0.01, sample_size: int = 200_000, dtype=torch.int8,
                 qscheme=torch.per_tensor_affine, quant_min=None, quant_max=None, eps=SCALE_FLOOR,
                 is_dynamic=False, **kwargs):
        super().__init__(dtype=dtype, qscheme=qscheme, quant_min=quant_min, quant_max=quant_max,
                         eps=eps, is_dynamic=is_dynamic, **kwargs)
        self.method = RangeMethod(method)
        self.percentile = float(percentile)
        self.averaging_constant = float(averaging_constant)
        self.sample_size = int(sample_size)
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("ema_min", torch.tensor(float("inf")))
        self.register_buffer("ema_max", torch.tensor(float("-inf")))
        self.register_buffer("pct_lo_sum", torch.tensor(0.0))
        self.register_buffer("pct_hi_sum", torch.tensor(0.0))
        self.register_buffer("n_batches", torch.tensor(0))
        self.register_buffer("sample", torch.empty(0))
        self._generator = torch.Generator().manual_seed(0)

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float().flatten()
        lo, hi = torch.aminmax(x)
        self.min_val = torch.minimum(self.min_val, lo)
        self.max_val = torch.maximum(self.max_val, hi)
        if int(self.n_batches) == 0:
            self.ema_min, self.ema_max = lo.clone(), hi.clone()
        else:
            c = self.averaging_constant
            self.ema_min = self.ema_min + c * (lo - self.ema_min)
            self.ema_max = self.ema_max + c * (hi - self.ema_max)
        if self.method in (RangeMethod.PERCENTILE, RangeMethod.MSE):
            sub = self._subsample(x, 1_000_000)
            q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0])
            plo, phi = torch.quantile(sub, q)
            self.pct_lo_sum += plo
            self.pct_hi_sum += phi
        if self.method == RangeMethod.MSE:
            keep = self._subsample(x, self.sample_size // 4)
            merged = torch.cat([self.sample, keep])
            self.sample = self._subsample(merged, self.sample_size)
        self.n_batches += 1
        return x_orig

    def _subsample(self, x: torch.Tensor, n: int) -> torch.Tensor:
        if x.numel() <= n:
            return x
        idx = torch.randint(0, x.numel(), (n,), generator=self._generator)
        return x[idx]

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if int(self.n_batches) == 0:
            return torch.tensor(0.0), torch.tensor(1.0)
        if self.method == RangeMethod.MINMAX:
            return self.min_val, self.max_val
        if self.method == RangeMethod.EMA:
            return self.ema_min, self.ema_max
        lo, hi = self.pct_lo_sum / self.n_batches, self.pct_hi_sum / self.n_batches
        if self.method == RangeMethod.PERCENTILE:
            return lo, hi
        # MSE: search clipped versions of the observed range on the kept sample.
        return mse_optimal_range(self.sample, self.min_val, self.max_val, self.quant_min, self.quant_max)

    @torch.jit.export
    def calculate_qparams(self):
        lo, hi = self.range()
        return affine_qparams(lo, hi, self.quant_min, self.quant_max, self.eps.item())

    def extra_repr(self):
        return f"method={self.method.value}, min={float(self.min_val):.4g}, max={float(self.max_val):.4g}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The reservoir sample changes size as data arrives; resize before the default copy.
        key = prefix + "sample"
        if key in state_dict:
            self.sample = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
