"""``QuantConfig``: every quantization choice in one frozen dataclass."""

from __future__ import annotations

import dataclasses
from typing import Literal

from quantir.config import check_choices
from quantir.errors import require
from quantir.quant.observers import RangeMethod


@dataclasses.dataclass(frozen=True)
class ODMConfig:
    """Hong & Lee, ECCV 2024 (docs/papers.md 2.3). Each piece switches on and off for ablations.

    ``mismatch_weight`` is lambda_M on the paper's scale (0 disables the regulariser): its code
    lineage (EDSR) computes the L1 loss on 0..255 pixels, quantir on 0..1, so the weight applied
    to quantir's loss is ``effective_weight(pixel_max)`` and the paper's 1e-5 keeps the paper's
    balance between the two losses. ``cooperative`` scales the
    mismatch gradient by sim = (cos(g_R, g_M) + 1) / 2 so it only acts where it agrees with the
    reconstruction gradient; off, the two losses are simply summed ("naive MR").
    ``granularity``: one similarity over all parameters ("model") or one per layer ("layer").
    ``detach_q``: treat q(X) as a constant target, so the regulariser pulls X towards its grid
    point (rounding and clipping error); with the STE through q only clipping error remains.
    """

    mismatch_weight: float = 0.0
    cooperative: bool = True
    granularity: Literal["model", "layer"] = "layer"
    detach_q: bool = True

    def __post_init__(self):
        check_choices(self)
        require(self.mismatch_weight >= 0, "mismatch_weight must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.mismatch_weight > 0

    def effective_weight(self, pixel_max: float) -> float:
        """lambda_M for quantir's loss. The reconstruction loss is on 0..1 (the paper's / 255) and
        activations are in model units (the paper's * pixel_max / 255), so lambda_M / pixel_max
        gives lambda_M * L_M / L_R the paper's value (before: lambda_M alone, 255x too strong for
        the 0..255 SR nets: the regulariser outweighed the L1 loss 3-5x instead of being about 1 % of it)."""
        return self.mismatch_weight / pixel_max


LayerRole = Literal["head", "tail", "upsampler"]
WeightRounding = Literal["nearest", "sum_preserving"]  # see QuantConfig.weight_rounding


@dataclasses.dataclass(frozen=True)
class KeepLayers:
    """Layers kept off the k-bit grid: the protocol of the ODM lineage (PAMS, DAQ, DDTB, ODM).

    ``mode``: "none" (every layer at k bits), "float" (the chosen layers' weights and outputs are
    not quantized in simulation: the papers' default) or "8bit" (they run at 8 bits: the papers'
    "fully quantized" mode). Layers are chosen by ``roles`` found in the graph (head: a conv with
    no conv before it; tail: one with no conv after it; upsampler: one whose output reaches a
    depth-to-space) and by ``patterns``, fnmatch patterns on module paths ("upsampler.*") for
    custom models. At 8 bits everywhere the rule changes nothing (export keeps today's behaviour).
    """

    mode: Literal["none", "float", "8bit"] = "none"
    roles: tuple[LayerRole, ...] = ("head", "tail", "upsampler")
    patterns: tuple[str, ...] = ()

    def __post_init__(self):
        check_choices(self)

    @property
    def enabled(self) -> bool:
        return self.mode != "none" and bool(self.roles or self.patterns)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Full-integer quantization: int8 per-channel symmetric weights, int8 per-tensor affine activations.

    ``act_bits``/``weight_bits`` below 8 simulate low-bit grids (ODM's 2-4 bit tables); export
    needs 8 (and no layer kept in float). ``keep`` holds chosen layers at 8 bits or in float. ``act_range`` initialises activation ranges (and is the PTQ calibrator);
    ``learn_act_ranges`` then trains them with LSQ+ gradients. ``weight_clip_percentile`` turns on
    ODM's weight clipping correction (range = percentile of |W| times a learnable gamma).
    ``exact_conv`` makes fake-quant convolutions accumulate like int8 kernels (exact int32 sums,
    int32 bias), so deep nets stay within 1 LSB of the deployed artifact.
    """

    act_bits: int = 8
    weight_bits: int = 8
    weight_per_channel: bool = True
    act_range: RangeMethod = RangeMethod.PERCENTILE
    act_percentile: float = 99.99
    learn_act_ranges: bool = True
    lsq_grad_scaling: bool = True
    weight_clip_percentile: float | None = None
    exact_conv: bool = True  # integer-exact convolutions in fake-quant (see quant/exact.py)
    allow_float_ops: bool = False  # user models: accept float islands (listed in parity.json) instead of failing
    odm: ODMConfig = ODMConfig()
    keep: KeepLayers = KeepLayers()  # low-bit protocol: head/tail/upsampler in float or at 8 bits
    # Which activations get a fake quantizer. "all": every tensor, as the int8 artifact computes it.
    # "conv_inputs": only the input of each conv (and its weights): the ODM lineage's simulation
    # (PAMS/DAQ/AdaBM's QConv2d), where residual adds, skips and the output stay float; not exportable.
    act_scope: Literal["all", "conv_inputs"] = "all"
    # An image-space anchor net's last conv (output = clamp(conv + repeated input)) gets the
    # output's scale and zero point 0 instead of a learned range, so its add is an exact integer
    # add and the output is rounded once, as a float model's uint8 output (quant/quantizer.py).
    # Only at 8-bit activations: the low-bit tables keep their k-bit residual.
    residual_on_output_grid: bool = True
    # Integer weight codes: "nearest", or "sum_preserving": each (out, in) kernel's code sum equals
    # its rounded float sum (quant/fake_quant.sum_preserving_codes), so a flat input sees the float
    # kernel's gain. Trained with (the STE), exported as is: same grid, same scales, same artifact format.
    weight_rounding: WeightRounding = "nearest"

    def __post_init__(self):
        check_choices(self)
        require(2 <= self.act_bits <= 8 and 2 <= self.weight_bits <= 8, "act_bits and weight_bits must be in 2..8")
        require(50.0 < self.act_percentile <= 100.0, "act_percentile must be in (50, 100]")
        if self.weight_clip_percentile is not None:
            require(50.0 < self.weight_clip_percentile <= 100.0, "weight_clip_percentile must be in (50, 100]")
            require(self.weight_rounding == "nearest",
                    "weight_rounding: sum_preserving does not combine with weight_clip_percentile (learned clipping)")

    @property
    def act_qrange(self) -> tuple[int, int]:
        return -(2 ** (self.act_bits - 1)), 2 ** (self.act_bits - 1) - 1

    @property
    def weight_qrange(self) -> tuple[int, int]:
        q = 2 ** (self.weight_bits - 1) - 1
        return -q, q

    @property
    def rounds_every_conv_on_max_grid(self) -> bool:
        """Every conv's weights rounded on max|W| / qmax: what quant/weight_start.py plans for."""
        return self.weight_clip_percentile is None and not self.keep.enabled

    @property
    def exportable(self) -> bool:
        return (self.act_bits == 8 and self.weight_bits == 8 and self.keep.mode != "float"
                and self.act_scope == "all")
