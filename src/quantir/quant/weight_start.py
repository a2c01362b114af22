"""Where the weights start on their int8 grid: AdaRound-style learned rounding and bias correction.

Both run on the float model before ``prepare_qat`` / ``prepare_ptq`` and leave an ordinary float
model, so the quantized graph, its export and the 0-LSB contract do not change:

* ``adaround``: each conv's weights are replaced by codes x scale on the grid the weight quantizer
  will compute (per channel max|W| / qmax, so the scale does not move), with each code chosen
  between floor and ceil of w / scale to minimise the conv's output error on calibration inputs
  (Nagel et al. 2020, "Up or Down? Adaptive Rounding": rectified-sigmoid soft rounding, a
  regulariser annealed towards 0/1, then a hard threshold). A layer keeps the configured rounding
  rule's codes where that rule reconstructs its calibration outputs better, so it is never worse
  there. PTQ then exports these codes; QAT starts from them.
* ``bias_correction`` (Nagel et al. 2019, "Data-Free Quantization", empirical form): each conv's
  bias absorbs the mean output shift its rounded weights cause, E[conv(x, W_q - W)] per output
  channel, measured on calibration inputs (zero padding included, so borders count as they do).

Each layer is solved on its FP32 inputs (layers are independent, so skips and branches need no
special order). Convs whose weights a quantizer would not round in this rule (learned clipping,
layers kept in float) are refused in ``check_weight_start``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from quantir.errors import ConfigError
from quantir.quant.config import QuantConfig
from quantir.quant.fake_quant import WeightFakeQuantize, sum_preserving_codes

aten = torch.ops.aten

log = logging.getLogger(__name__)

# Rectified sigmoid of AdaRound: h(V) = clamp(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1).
ZETA, GAMMA = 1.1, -0.1
ADAROUND_ITERS = 500  # per conv
ADAROUND_LR = 1e-2  # Adam on V, the paper's setting
# Regulariser weight per mean tap, against the output error normalised to the rule codes' (= 1).
# Chosen on the built-in x3 net's calibration crops (benchmarks/adaround_reg.py): summed layer output
# MSE relative to nearest codes 0.86 / 0.78 / 0.59 / 0.49 / 0.49 at weights 1 / 5 / 20 / 50 / 200 (too
# weak a regulariser leaves the soft rounding at the float weights; the threshold gives back nearest).
ADAROUND_REG = 50.0
ADAROUND_WARMUP = 0.2  # share of the iterations without the regulariser (the paper's warm-up)
BETA_START, BETA_END = 20.0, 2.0  # annealing of the regulariser's exponent
ADAROUND_BATCH = 4  # calibration inputs per iteration
MAX_INPUTS = 16  # calibration inputs kept per conv (memory: a few MB per layer for the tiny nets)


def check_weight_start(config: QuantConfig) -> None:
    """One line if the learned start cannot be on the grid ``config``'s quantizers compute."""
    if not config.rounds_every_conv_on_max_grid:
        raise ConfigError("adaround/bias_correction need every conv on the max|W| grid: "
                          "no weight_clip_percentile (learned clipping), no layers kept off the grid (keep)")


@dataclasses.dataclass
class ConvSite:
    """One conv of the model as it runs: its weight and bias parameters and its call's geometry.

    Found by watching the aten convolutions of a forward pass (``_find_convs``), so nn.Conv2d
    modules and the convs of an exported, rewritten graph (``quantir quantize``) are treated alike.
    """

    name: str
    weight: nn.Parameter
    bias: nn.Parameter | None
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    inputs: list[torch.Tensor] = dataclasses.field(default_factory=list)

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class _ConvRecorder(TorchDispatchMode):
    """Records the input of every 2-D convolution whose weight is one of ``params`` (by storage)."""

    def __init__(self, params: dict[int, tuple[str, nn.Parameter]], limit: int):
        super().__init__()
        self.params, self.limit, self.sites = params, limit, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (aten.convolution.default, aten.conv2d.default) and args[1].dim() == 4:
            self._record(func, args)
        return out

    def _record(self, func, args):
        key = args[1].untyped_storage().data_ptr()
        if key not in self.params:
            return
        if func is aten.convolution.default:
            x, _, b, stride, padding, dilation, transposed, _, groups = args
            if transposed:
                return
        else:
            defaults = (None, None, None, 1, 0, 1, 1)  # input, weight, bias, stride, padding, dilation, groups
            x, _, b, stride, padding, dilation, groups = tuple(args) + defaults[len(args):]
            if isinstance(padding, str):
                return
        name, weight = self.params[key]
        site = self.sites.get(key)
        if site is None:
            bias = self.params.get(b.untyped_storage().data_ptr(), (None, None))[1] if b is not None else None
            site = self.sites[key] = ConvSite(name, weight, bias, _pair(stride), _pair(padding), _pair(dilation),
                                              int(groups))
        room = self.limit - sum(t.shape[0] for t in site.inputs)
        if room > 0:
            site.inputs.append(x[:room].detach().clone())


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (int(v), int(v))


@torch.no_grad()
def _find_convs(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[ConvSite]:
    """Every conv of ``model`` with a parameter weight, and up to MAX_INPUTS of its float inputs."""
    params = {p.untyped_storage().data_ptr(): (n, p) for n, p in model.named_parameters()}
    recorder = _ConvRecorder(params, MAX_INPUTS)
    for x in batches:
        with recorder:
            model(x)
        if recorder.sites and all(sum(t.shape[0] for t in s.inputs) >= MAX_INPUTS for s in recorder.sites.values()):
            break
    return list(recorder.sites.values())


def _grid(w: torch.Tensor, config: QuantConfig) -> tuple[torch.Tensor, int, int]:
    """The scale (broadcastable to ``w``) and code range that ``config``'s weight quantizer computes
    for ``w``: the module ``prepare_*`` inserts, run once, so the two cannot drift apart."""
    qmin, qmax = config.weight_qrange
    scheme = torch.per_channel_symmetric if config.weight_per_channel else torch.per_tensor_symmetric
    quantizer = WeightFakeQuantize(qmin, qmax, qscheme=scheme, ch_axis=0, rounding=config.weight_rounding)
    with torch.no_grad():
        quantizer(w)
    return quantizer.scale.reshape(-1, 1, 1, 1), qmin, qmax


def _rule_codes(t: torch.Tensor, qmin: int, qmax: int, config: QuantConfig) -> torch.Tensor:
    if config.weight_rounding == "sum_preserving":
        return sum_preserving_codes(t, qmin, qmax)
    return torch.clamp(torch.round(t), qmin, qmax)


def _rec_error(conv: ConvSite, x: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        return float((conv(x, w) - target).pow(2).mean())


def _soft(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround_codes(conv: ConvSite, x: torch.Tensor, config: QuantConfig, iters: int = ADAROUND_ITERS,
                   seed: int = 0, reg: float = ADAROUND_REG) -> tuple[torch.Tensor, dict]:
    """Integer codes for ``conv``'s weight that reconstruct its output on inputs ``x``, and a summary."""
    w = conv.weight.detach()
    scale, qmin, qmax = _grid(w, config)
    t = w / scale
    low = torch.floor(t)
    rule = _rule_codes(t, qmin, qmax, config)
    # Taps at the top of the range keep their code: the grid's scale is max|W| / qmax, and a
    # maximum rounded down would shrink it.
    fixed = t.abs() >= qmax - 0.5
    frac = (t - low).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1)).requires_grad_(True)
    target = conv(x, w).detach()
    base = max(_rec_error(conv, x, rule * scale, target), 1e-12)
    opt = torch.optim.Adam([v], lr=ADAROUND_LR)
    gen = torch.Generator().manual_seed(seed)
    warm = int(ADAROUND_WARMUP * iters)
    for it in range(iters):
        idx = torch.randint(0, x.shape[0], (min(ADAROUND_BATCH, x.shape[0]),), generator=gen)
        h = _soft(v)
        wq = torch.where(fixed, rule, torch.clamp(low + h, qmin, qmax)) * scale
        loss = (conv(x[idx], wq) - target[idx]).pow(2).mean() / base
        if it >= warm:
            beta = BETA_END + (BETA_START - BETA_END) * (1 + math.cos(math.pi * (it - warm) / max(1, iters - warm))) / 2
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        learned = torch.where(fixed, rule, torch.clamp(low + (_soft(v) >= 0.5).to(w.dtype), qmin, qmax))
        err = {"rule": _rec_error(conv, x, rule * scale, target),
               "adaround": _rec_error(conv, x, learned * scale, target)}
    keep = err["adaround"] < err["rule"]
    codes = learned if keep else rule
    summary = {"mse_rule": err["rule"], "mse_adaround": err["adaround"], "kept": "adaround" if keep else "rule",
               "changed": float((learned != rule).float().mean())}
    return codes, summary


@torch.no_grad()
def _correct_bias(conv: ConvSite, x: torch.Tensor, delta: torch.Tensor) -> float:
    """Subtract the mean output shift of weight error ``delta``; returns its largest |value|."""
    shift = conv(x, delta).mean(dim=(0, 2, 3))
    conv.bias.data.sub_(shift)
    return float(shift.abs().max())


def weight_start(model: nn.Module, batches: Iterable[torch.Tensor], config: QuantConfig, adaround: bool = False,
                 bias_correction: bool = False, iters: int = ADAROUND_ITERS, seed: int = 0,
                 reg: float = ADAROUND_REG) -> dict[str, dict]:
    """Set ``model``'s conv weights on their grid by AdaRound and/or correct its biases, in place.

    ``batches`` are calibration inputs in model units (never evaluation photos). Returns a summary
    per conv (output MSE of the rule's codes and of the learned ones, the share of codes changed,
    the bias shift removed). ``model`` stays a float model; call it on a copy when the FP32 model
    is still needed as the teacher or reference.
    """
    check_weight_start(config)
    if not (adaround or bias_correction):
        return {}
    model.eval()
    convs = _find_convs(model, batches)
    if not convs:
        raise ConfigError("adaround/bias_correction: no conv with a weight parameter ran in the model's forward")
    report = {}
    for k, conv in enumerate(tqdm(convs, desc="weight start", unit="conv", leave=False)):
        x, w = torch.cat(conv.inputs), conv.weight.detach().clone()
        scale, qmin, qmax = _grid(w, config)
        row: dict = {}
        if adaround:
            with torch.enable_grad():
                codes, row = adaround_codes(conv, x, config, iters=iters, seed=seed + k, reg=reg)
            conv.weight.data.copy_(codes * scale)
            snapped = conv.weight.detach()
        else:
            snapped = _rule_codes(w / scale, qmin, qmax, config) * scale
        if bias_correction:
            if conv.bias is None:
                log.info("bias correction: %s has no bias, left as is", conv.name)
            else:
                row["bias_shift"] = _correct_bias(conv, x, snapped - w)
        report[conv.name] = row
    if adaround:
        kept = sum(r["kept"] == "adaround" for r in report.values())
        log.info("adaround: learned codes kept on %d of %d convs (output MSE %.4g -> %.4g, summed)", kept,
                 len(report), sum(r["mse_rule"] for r in report.values()),
                 sum(min(r["mse_rule"], r["mse_adaround"]) for r in report.values()))
    return report
