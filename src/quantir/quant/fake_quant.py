"""Fake quantizers whose forward is exactly what ``convert`` will compute.

Two traps in the stock PT2E modules make a converted model differ from the model that was
trained (measured in docs/toolchain.md): the fused weight fake-quant trains with amax/127.5
while convert exports amax/127, and the fused activation fake-quant drifts by a few LSB. Both
modules here call the same ``torch.fake_quantize_per_*_affine`` kernels with the same
parameters that ``calculate_qparams`` hands to convert, so a frozen model converts bit-exactly.

* ``ActFakeQuantize``: per-tensor affine activations. A ``RangeObserver`` watches float
  activations while observing; its range is adopted when observation ends, then learned (LSQ+
  gradients with LSQ's gradient scaling) or frozen.
  It can also record ODM's mismatch ``||X - q(X)||_2`` for the regulariser.
* ``WeightFakeQuantize``: symmetric weights, per channel or per tensor, with the range taken
  from the current weights at every step (no lag behind the optimiser): either the absolute
  maximum, or ODM's weight clipping correction ``percentile99(|W|) * gamma`` with a learnable
  gamma per layer. Codes are rounded to nearest, or sum-preserving (``sum_preserving_codes``).
"""

from __future__ import annotations

import math

import torch
from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

from quantir.numerics import INT8_MAX, INT8_MIN, SCALE_FLOOR
from quantir.quant.config import WeightRounding
from quantir.quant.observers import RangeObserver


def _fake_quant(x, scale, zero_point, qmin, qmax, ch_axis):
    if scale.numel() > 1:
        return torch.fake_quantize_per_channel_affine(x, scale, zero_point, ch_axis, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)


def _broadcast(t: torch.Tensor, x: torch.Tensor, ch_axis: int) -> torch.Tensor:
    if t.numel() == 1:
        return t.reshape([1] * x.dim())
    shape = [1] * x.dim()
    shape[ch_axis] = -1
    return t.reshape(shape)


@torch.no_grad()
def sum_preserving_codes(t: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes for ``t = w / scale`` that keep each kernel's sum: round to nearest, then move
    the taps with the largest remainders one level until every (out, in) kernel's code sum equals
    ``round(sum(t))``.

    Why: on smooth photos a conv's weight rounding error is sum(dW) x local intensity, a fixed
    sub-pixel pattern whose size follows the brightness. Keeping the sums keeps each kernel's
    response to a flat input (BENCHMARKS.md "Sum-preserving weight rounding": after PTQ the x3
    anchor net's INT8 loss on the stress photos fell from -0.875 to -0.118 dB). A moved tap goes to the other neighbour of ``t``, so
    every code stays within [floor(t), ceil(t)] and inside [qmin, qmax]: |round(sum) - sum(round)|
    = k needs at least 2k - 1 taps whose remainder points that way. Same grid and scales as
    nearest rounding, so the artifacts store these codes unchanged. 1x1 kernels and non-conv
    weights have one tap per kernel: plain nearest rounding. Ties in the ranking go to the lower
    tap index (stable sort), so the rule is deterministic on every device.
    """
    if t.dim() != 4 or t.shape[2] * t.shape[3] == 1:
        return torch.clamp(torch.round(t), qmin, qmax)
    taps = t.detach().double().clamp(qmin, qmax).reshape(t.shape[0], t.shape[1], -1)
    codes = torch.round(taps)
    remainder = taps - codes
    need = torch.round(taps.sum(-1, keepdim=True)) - codes.sum(-1, keepdim=True)
    # Up-moves take the largest remainders first, down-moves the most negative ones.
    order = torch.argsort(torch.where(need >= 0, -remainder, remainder), dim=-1, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(taps.shape[-1], device=t.device).expand_as(order))
    codes = codes + torch.sign(need) * (rank < need.abs()).double()
    return codes.reshape(t.shape).to(t.dtype)


class _LearnableFakeQuant(torch.autograd.Function):
    """Fake quantization with the STE for x and LSQ+ gradients for scale and zero point.

    Inside the grid y = round(x/s)*s, so dy/ds = round(x/s) - x/s and dy/dz = 0; clipped
    values sit at (q_lim - z)*s, so dy/ds = q_lim - z and dy/dz = -s. ``grad_factor`` is
    LSQ's 1/sqrt(N * q_max) scaling that keeps the range steps comparable to weight steps.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, ch_axis, grad_factor):
        zp = torch.clamp(torch.round(zero_point), qmin, qmax).to(torch.int32)
        ctx.save_for_backward(x, scale, zp)
        ctx.qmin, ctx.qmax, ctx.ch_axis, ctx.grad_factor = qmin, qmax, ch_axis, grad_factor
        return _fake_quant(x, scale.float(), zp, qmin, qmax, ch_axis)

    @staticmethod
    def backward(ctx, grad):
        x, scale, zp = ctx.saved_tensors
        s = _broadcast(scale, x, ctx.ch_axis)
        z = _broadcast(zp.float(), x, ctx.ch_axis)
        xs = x / s
        q = torch.round(xs) + z
        below, above = q < ctx.qmin, q > ctx.qmax
        inside = ~(below | above)
        grad_x = grad * inside
        grad_scale = grad_zp = None
        reduce_dims = [d for d in range(x.dim()) if not (scale.numel() > 1 and d == ctx.ch_axis)]
        if ctx.needs_input_grad[1]:
            ds = torch.where(inside, torch.round(xs) - xs,
                             torch.where(below, ctx.qmin - z, ctx.qmax - z))
            grad_scale = (grad * ds).sum(dim=reduce_dims).reshape(scale.shape) * ctx.grad_factor
        if ctx.needs_input_grad[2]:
            dz = torch.where(inside, torch.zeros_like(x), -s.expand_as(x))
            grad_zp = (grad * dz).sum(dim=reduce_dims).reshape(scale.shape) * ctx.grad_factor
        return grad_x, grad_scale, grad_zp, None, None, None, None


class ActFakeQuantize(FakeQuantizeBase):
    """Per-tensor affine activation fake-quant: observe, then learn (LSQ+) or freeze the range."""

    def __init__(self, observer=RangeObserver, quant_min=INT8_MIN, quant_max=INT8_MAX, learnable=True,
                 grad_scaling=True, dtype=torch.int8, qscheme=torch.per_tensor_affine,
                 is_dynamic=False, **observer_kwargs):
        super().__init__()
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)
        self.dtype, self.qscheme, self.ch_axis, self.is_dynamic = dtype, qscheme, -1, False
        self.activation_post_process = observer(dtype=dtype, qscheme=qscheme, quant_min=quant_min,
                                                quant_max=quant_max, **observer_kwargs)
        self.learnable = bool(learnable)  # permission (False for PTQ); ``learning`` is the current state
        self.learning = False
        self.grad_scaling = bool(grad_scaling)
        self.scale = torch.nn.Parameter(torch.tensor([1.0]), requires_grad=False)
        self.zero_point = torch.nn.Parameter(torch.tensor([0.0]), requires_grad=False)
        # ODM bookkeeping: None (off), "detached" (q(X) is a constant target) or "ste".
        self.mismatch_mode: str | None = None
        self.mismatch: torch.Tensor | None = None

    def enable_observer(self, enabled: bool = True) -> None:
        was_observing = bool(self.observer_enabled[0])
        super().enable_observer(enabled)
        if was_observing and not enabled:
            self._sync_from_observer()
        self._sync_requires_grad()

    @torch.no_grad()
    def _sync_from_observer(self) -> None:
        """Take the range the observer settled on (once: the MSE search is too costly per batch)."""
        if int(self.activation_post_process.n_batches) == 0:
            return
        scale, zp = self.activation_post_process.calculate_qparams()
        self.scale.copy_(scale)
        self.zero_point.copy_(zp.float())

    def _sync_requires_grad(self) -> None:
        learn = self.learnable and self.learning and not bool(self.observer_enabled[0])
        self.scale.requires_grad_(learn)
        self.zero_point.requires_grad_(learn)

    def set_learning(self, on: bool) -> None:
        self.learning = bool(on)
        self._sync_requires_grad()

    @torch.jit.export
    def calculate_qparams(self):
        scale = torch.clamp(self.scale.detach(), min=SCALE_FLOOR)
        zp = torch.clamp(torch.round(self.zero_point.detach()), self.quant_min, self.quant_max)
        return scale, zp.to(torch.int32)

    def forward(self, x):
        if bool(self.observer_enabled[0]):
            # Calibration sees float activations (as PT2E observers do); the range is taken when
            # observation ends (enable_observer(False), i.e. any phase after "observe").
            self.activation_post_process(x.detach())
            return x
        if not bool(self.fake_quant_enabled[0]):
            return x
        factor = 1.0
        if self.grad_scaling:
            per_sample = max(1, x[0].numel() if x.dim() > 0 else 1)
            factor = 1.0 / math.sqrt(per_sample * self.quant_max)
        # Out-of-place clamp: a quantizer shared by several graph edges runs more than once per
        # forward, and an in-place update would invalidate the tensors saved for backward.
        scale = torch.clamp(self.scale, min=SCALE_FLOOR)
        y = _LearnableFakeQuant.apply(x, scale, self.zero_point, self.quant_min, self.quant_max, -1, factor)
        if self.mismatch_mode is not None:
            target = y.detach() if self.mismatch_mode == "detached" else y
            self.mismatch = torch.linalg.vector_norm(x - target)
        return y

    def extra_repr(self):
        return (f"quant_min={self.quant_min}, quant_max={self.quant_max}, learning={self.scale.requires_grad}, "
                f"scale={float(self.scale):.5g}, zero_point={float(self.zero_point):.1f}")


class WeightFakeQuantize(FakeQuantizeBase):
    """Symmetric weight fake-quant with a range recomputed from the current weights.

    ``clip_percentile=None`` uses max|W|; a value such as 99.0 uses that percentile of |W|
    times a learnable per-layer ``gamma`` (ODM's weight clipping correction). Qparams are
    refreshed only while the observer is enabled, so a frozen model keeps exactly the scales
    that convert exports. ``rounding`` picks the codes on that grid: "nearest" (the kernel
    ``convert_pt2e`` inserts) or "sum_preserving" (``sum_preserving_codes``, with the STE); ``snap``
    gives the on-grid weights either way, and ``api.plain_graph`` hands exactly those to convert.
    """

    def __init__(self, quant_min=-INT8_MAX, quant_max=INT8_MAX, dtype=torch.int8, qscheme=torch.per_channel_symmetric,
                 ch_axis=0, clip_percentile: float | None = None, rounding: WeightRounding = "nearest",
                 is_dynamic=False, **_ignored):
        super().__init__()
        if rounding == "sum_preserving" and (clip_percentile is not None or ch_axis != 0):
            raise ValueError("sum-preserving weight rounding needs output channels on axis 0 and no learned clipping")
        self.rounding = rounding
        self.quant_min, self.quant_max = int(quant_min), int(quant_max)
        self.dtype, self.qscheme, self.ch_axis, self.is_dynamic = dtype, qscheme, int(ch_axis), False
        self.per_channel = qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        self.clip_percentile = clip_percentile
        self.gamma = torch.nn.Parameter(torch.tensor([1.0]), requires_grad=clip_percentile is not None)
        self.register_buffer("scale", torch.tensor([1.0]))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.int32))

    def _range(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach().abs()
        if self.per_channel:
            w = w.transpose(0, self.ch_axis).reshape(w.shape[self.ch_axis], -1)
        else:
            w = w.reshape(1, -1)
        if self.clip_percentile is None:
            return w.amax(dim=1)
        return torch.quantile(w.float(), self.clip_percentile / 100.0, dim=1)

    def calculate_qparams(self):
        return self.scale.detach().clone(), self.zero_point.clone()

    def forward(self, w):
        if bool(self.observer_enabled[0]):
            scale = torch.clamp(self._range(w) / self.quant_max, min=SCALE_FLOOR)
            if self.clip_percentile is not None:
                scale = torch.clamp(scale * self.gamma.detach(), min=SCALE_FLOOR)
            with torch.no_grad():
                if self.scale.shape != scale.shape:
                    self.scale.resize_(scale.shape)
                    self.zero_point.resize_(scale.shape)
                self.scale.copy_(scale)
                self.zero_point.zero_()
        if not bool(self.fake_quant_enabled[0]):
            return w
        if self.rounding == "sum_preserving":
            # Straight-through inside the grid's range, as the nearest kernel's gradient is.
            scale = _broadcast(self.scale, w, self.ch_axis)
            t = w.detach() / scale
            nearest = torch.round(t)
            inside = (nearest >= self.quant_min) & (nearest <= self.quant_max)
            return sum_preserving_codes(t, self.quant_min, self.quant_max) * scale + (w - w.detach()) * inside
        if self.clip_percentile is None or not self.gamma.requires_grad:
            return _fake_quant(w, self.scale, self.zero_point, self.quant_min, self.quant_max, self.ch_axis)
        # Route the clipping-range gradient to gamma (scale = base * gamma) while the forward
        # value stays exactly the stored scale: gamma - gamma.detach() is an exact zero.
        base = (self.scale / self.gamma.detach()).detach()
        scale = self.scale + (self.gamma - self.gamma.detach()) * base
        per_ch = w[0].numel() if self.per_channel else w.numel()
        factor = 1.0 / math.sqrt(per_ch * self.quant_max)
        return _LearnableFakeQuant.apply(w, scale, torch.zeros_like(scale), self.quant_min, self.quant_max,
                                         self.ch_axis, factor)

    @torch.no_grad()
    def snap(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` on its int8 grid (code x scale) under this quantizer's rounding: what the artifact stores."""
        if self.rounding == "nearest" and self.per_channel:
            n = w.shape[self.ch_axis]
            return torch.fake_quantize_per_channel_affine(
                w, self.scale.expand(n).contiguous(), torch.zeros(n, dtype=torch.int32, device=w.device),
                self.ch_axis, self.quant_min, self.quant_max)
        if self.rounding == "nearest":
            return torch.fake_quantize_per_tensor_affine(w, self.scale, self.zero_point, self.quant_min, self.quant_max)
        scale = _broadcast(self.scale, w, self.ch_axis)
        return sum_preserving_codes(w.detach() / scale, self.quant_min, self.quant_max) * scale

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Per-channel scales get their length on the first forward; match it before copying.
        for name in ("scale", "zero_point"):
            key = prefix + name
            if key in state_dict and getattr(self, name).shape != state_dict[key].shape:
                getattr(self, name).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self):
        return (f"per_channel={self.per_channel}, bits_range=[{self.quant_min},{self.quant_max}], "
                f"clip_percentile={self.clip_percentile}, gamma={float(self.gamma):.4f}, rounding={self.rounding}")
