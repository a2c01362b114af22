"""Deployment-aware INT8 x3 SR (AIO_MAI, MAI 2026): extract -> refine -> upsample in LR space.

Paper configuration (docs/papers.md 3.2): stem conv3x3(3->C) without activation; N MobileOne
blocks; global feature add with the stem output; conv3x3(C->3*s*s); output clamp
min(ReLU(x), 255); depth-to-space(s). Pixel values 0..255 in and out. C=32, N=8, k=5 gives
82,683 deploy parameters.

A MobileOne block trains as ReLU(sum_i BN_i(conv3x3_i(x)) + BN(conv1x1(x)) + BN_id(x)) and
deploys as ReLU(conv3x3(x) + b): ``reparameterize()`` folds every branch exactly.

Differences from the reference, both exact re-expressions: the upsampler is TFLite's DCR
depth-to-space instead of PyTorch's CRD PixelShuffle (a fixed permutation of the last conv's
output channels, ``layers.crd_to_dcr_channels``), so the artifact uses one DEPTH_TO_SPACE op.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn as nn

from quantir.config import check_choices
from quantir.data.task import ModelInfo, Task
from quantir.errors import require
from quantir.models.layers import anchor, conv1x1, conv3x3, depth_to_space, fuse_conv_bn, symmetric_pad
from quantir.models.protocol import RestorationModel
from quantir.models.registry import register_model


class MobileOneBlock(nn.Module):
    """k x (conv3x3+BN) + (conv1x1+BN) + BN identity, summed, ReLU; or its fused deploy form."""

    def __init__(self, channels: int, branches: int = 5, deploy: bool = False):
        super().__init__()
        self.channels, self.branches = channels, branches
        if deploy:
            self.fused = conv3x3(channels, channels)
        else:
            self.convs = nn.ModuleList(
                nn.Sequential(conv3x3(channels, channels, bias=False), nn.BatchNorm2d(channels))
                for _ in range(branches))
            self.scale = nn.Sequential(conv1x1(channels, channels, bias=False), nn.BatchNorm2d(channels))
            self.identity = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        if hasattr(self, "fused"):
            return self.act(self.fused(x))
        y = self.identity(x) + self.scale(x)
        for branch in self.convs:
            y = y + branch(x)
        return self.act(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if hasattr(self, "fused"):
            return
        c = self.channels
        weight = torch.zeros(c, c, 3, 3)
        bias = torch.zeros(c)
        for conv, bn in self.convs:
            w, b = fuse_conv_bn(conv.weight, None, bn)
            weight += w
            bias += b
        w, b = fuse_conv_bn(self.scale[0].weight, None, self.scale[1])
        weight[:, :, 1:2, 1:2] += w
        bias += b
        eye = torch.zeros(c, c, 3, 3)
        eye[torch.arange(c), torch.arange(c), 1, 1] = 1.0
        w, b = fuse_conv_bn(eye, None, self.identity)
        weight += w
        bias += b
        self.fused = conv3x3(c, c)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(bias)
        del self.convs, self.scale, self.identity


@dataclasses.dataclass(frozen=True)
class MobileOneSRConfig:
    channels: int = 32
    blocks: int = 8
    branches: int = 5
    scale: Literal[2, 3, 4] = 3
    anchor: bool = False  # ABPN-style image-space residual (input repeated s*s times) before the shuffle
    skip: Literal["add", "concat", "none"] = "add"  # "add": f_N + f_0 (paper); "concat": conv1x1 over [f_N, f_0]; "none"
    stem_act: bool = False  # ReLU after the stem (the reference has none; wide-range stems quantize coarsely)
    deploy: bool = False  # build the fused form directly (to load deploy checkpoints)
    # Deploy form with the linear stem composed into its two readers (``compose_stem``); QAT-only.
    composed_stem: bool = False
    # composed_stem only: the direct conv's int8 range, +-direct_split pixel levels (0: one conv).
    # Beyond it two edge branches carry the excess onto the input grid (``compose_stem``).
    direct_split: float = 0.0

    def __post_init__(self):
        check_choices(self)
        require(self.channels > 0 and self.blocks >= 0 and self.branches >= 1, "mobileone_sr: bad sizes")
        require(not self.composed_stem or (self.deploy and not self.stem_act and self.skip == "add"
                                           and self.blocks >= 1),
                "mobileone_sr: composed_stem needs deploy, stem_act false, skip 'add' and at least one block")
        require(self.direct_split >= 0 and (self.direct_split == 0 or self.composed_stem),
                "mobileone_sr: direct_split needs composed_stem and must be >= 0")


class MobileOneSR(RestorationModel):
    def __init__(self, cfg: MobileOneSRConfig):
        super().__init__()
        self.cfg = cfg
        self.info = ModelInfo(task=Task.SR, scale=cfg.scale, pixel_max=255.0)
        c, s = cfg.channels, cfg.scale
        self.clamp_output = True
        if cfg.composed_stem:  # see compose_stem: stem o first block, and out o stem minus the anchor
            self.head = nn.Conv2d(3, c, COMPOSED_KERNEL)
            self.head_act = nn.ReLU()
            self.body = nn.Sequential(*[MobileOneBlock(c, cfg.branches, True) for _ in range(cfg.blocks - 1)])
            self.direct = nn.Conv2d(3, 3 * s * s, COMPOSED_KERNEL)
            if cfg.direct_split:
                self.direct_over = nn.Conv2d(3, 3 * s * s, COMPOSED_KERNEL)
                self.direct_under = nn.Conv2d(3, 3 * s * s, COMPOSED_KERNEL)
            self.out = conv3x3(c, 3 * s * s)
            return
        self.stem = conv3x3(3, c)
        self.stem_act = nn.ReLU() if cfg.stem_act else nn.Identity()
        self.body = nn.Sequential(*[MobileOneBlock(c, cfg.branches, cfg.deploy) for _ in range(cfg.blocks)])
        self.merge = conv1x1(2 * c, c) if cfg.skip == "concat" else None
        self.out = conv3x3(c, 3 * s * s)

    def forward(self, x):
        if self.cfg.composed_stem:
            return self._composed_forward(x)
        f0 = self.stem_act(self.stem(x))
        f = self.body(f0)
        if self.cfg.skip == "add":
            f = f + f0
        elif self.cfg.skip == "concat":
            f = self.merge(torch.cat([f, f0], dim=1))
        y = self.out(f)
        if self.cfg.anchor:
            y = y + anchor(x, self.cfg.scale)
        if self.clamp_output:
            y = torch.clamp(y, 0.0, 255.0)
        return depth_to_space(y, self.cfg.scale)

    def _composed_forward(self, x):
        xp = symmetric_pad(x, COMPOSED_KERNEL // 2)
        f = self.body(self.head_act(self.head(xp)))
        # The two residual parts meet after the last convs (their rounding is not amplified) and
        # their sum is the residual on the output grid of the anchor add.
        if self.cfg.direct_split:
            # direct = clamp(direct, +-R) + relu(direct - R) + min(direct + R, 0): the clamped part
            # on a fine int8 grid (the quantizer reads the clamp's bounds as its range), the excess
            # (edges only, zero elsewhere) added to the anchor on the input grid.
            r = self.cfg.direct_split
            base = anchor(x, self.cfg.scale)
            fine = torch.clamp(self.direct(xp), -r, r)
            base = (base + torch.relu(self.direct_over(xp))) + torch.clamp(self.direct_under(xp), max=0.0)
            y = (self.out(f) + fine) + base
        else:  # (this op order numbers the quantizers of the QAT checkpoints written before the split)
            y = (self.out(f) + self.direct(xp)) + anchor(x, self.cfg.scale)
        if self.clamp_output:
            y = torch.clamp(y, 0.0, 255.0)
        return depth_to_space(y, self.cfg.scale)


COMPOSED_KERNEL = 5  # two 3x3 convs in a row


def _compose(outer: nn.Conv2d, inner: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of outer(inner(x)) as one conv (3x3 o 3x3 = 5x5), exact where neither pads."""
    wo, wi = outer.weight.double(), inner.weight.double()
    k = wo.shape[-1]
    size = k + wi.shape[-1] - 1
    weight = torch.zeros(wo.shape[0], wi.shape[1], size, size, dtype=torch.float64)
    for a in range(k):
        for b in range(k):
            weight[:, :, a:a + wi.shape[-2], b:b + wi.shape[-1]] += torch.einsum("om,mikl->oikl", wo[:, :, a, b], wi)
    bias = outer.bias.double() + torch.einsum("omab,m->o", wo, inner.bias.double())
    return weight, bias


def check_composable(cfg) -> None:
    """Raise a one-line ConfigError unless ``compose_stem`` can take a model of this config row
    (trainers call it before any training)."""
    require(isinstance(cfg, MobileOneSRConfig) and not cfg.composed_stem and not cfg.stem_act
            and cfg.skip == "add" and cfg.blocks >= 1,
            "compose_stem: needs mobileone_sr with a linear stem (stem_act false), skip 'add' and a block")


@torch.no_grad()
def compose_stem(model: MobileOneSR, direct_split: float = 0.0) -> MobileOneSR:
    """The fused paper network with its linear stem composed into the two convs that read it.

    The stem output f0 and the skip sum f0 + body(f0) carry pixel intensity (about -160..210 on
    photos, issue 15): per-tensor int8 on them, multiplied through the convs that read them, is most
    of the INT8 loss on smooth photos. Composed, they are never quantized:

    * first block: relu(conv1(stem(x))) = relu(head(x)), head = conv1 o stem, one 5x5 conv;
    * output: out(f_N + f0) = out(f_N) + out(stem(x)) = out(f_N) + direct(x) + anchor(x), where
      direct = out o stem minus the anchor's identity taps (the anchor keeps the pixel on the output
      grid; with ``anchor`` true already, direct = out o stem).

    Exact at every pixel whose 5x5 input window lies inside the image. At the border the original
    zero-pads f0, which no conv on the input reproduces (zero-padding the input costs about 2 dB),
    so both 5x5 convs read the input mirror-padded (``symmetric_pad``): outputs within about 10 LR
    pixels of the image border differ slightly from the original (QAT, distilled from the
    original, then fits them). Returns a new model; ``model`` is left alone.

    ``direct_split`` R > 0: direct's output spans about +-110 pixel levels at sharp edges but is
    small almost everywhere else, so one int8 grid over it (step ~0.65) adds visible noise on smooth
    photos. Split exactly as clamp(d, -R, R) + relu(d - R) + min(d + R, 0): the first part on a
    fine grid of its own (step R/127), the other two zero except at edges, added to the anchor on
    the input grid (BENCHMARKS.md "Direct split").
    """
    cfg = model.cfg
    check_composable(cfg)
    require(all(hasattr(b, "fused") for b in model.body), "compose_stem: needs the fused (reparameterized) model")
    weight = model.stem.weight
    composed = MobileOneSR(dataclasses.replace(cfg, deploy=True, composed_stem=True, direct_split=direct_split)
                           ).to(weight.device, weight.dtype)
    composed.model_name, composed.model_cfg = model.model_name, composed.cfg
    composed.reparameterized, composed.clamp_output = True, model.clamp_output
    w, b = _compose(model.body[0].fused, model.stem)
    composed.head.weight.copy_(w)
    composed.head.bias.copy_(b)
    for src, dst in zip(model.body[1:], composed.body):
        dst.load_state_dict(src.state_dict())
    composed.out.load_state_dict(model.out.state_dict())
    w, b = _compose(model.out, model.stem)
    if not cfg.anchor:  # DCR: output channel k*3 + c is sub-pixel k of colour c
        r = COMPOSED_KERNEL // 2
        for j in range(w.shape[0]):
            w[j, j % 3, r, r] -= 1.0
    b = b - model.out.bias.double()  # out(f_N) already adds out's bias
    composed.direct.weight.copy_(w)
    composed.direct.bias.copy_(b)
    if direct_split:
        for conv, shift in ((composed.direct_over, -direct_split), (composed.direct_under, direct_split)):
            conv.weight.copy_(w)
            conv.bias.copy_(b + shift)
    return composed.eval()


@register_model("mobileone_sr", MobileOneSRConfig(), "AIO_MAI x3 SR: C=32, 8 MobileOne blocks (k=5), 82,683 deploy params")
def mobileone_sr(cfg: MobileOneSRConfig) -> MobileOneSR:
    return MobileOneSR(cfg)


@register_model("mobileone_sr_anchor", MobileOneSRConfig(anchor=True, stem_act=True),
                "mobileone_sr with ABPN's image-space anchor and a ReLU stem (INT8-friendlier)")
def mobileone_sr_anchor(cfg: MobileOneSRConfig) -> MobileOneSR:
    return MobileOneSR(cfg)


@register_model("mobileone_sr_fast", MobileOneSRConfig(channels=24, blocks=5, branches=4, anchor=True, stem_act=True),
                "speed preset: C=24, 5 blocks, anchor residual (~4x fewer MACs than the paper net)")
def mobileone_sr_fast(cfg: MobileOneSRConfig) -> MobileOneSR:
    return MobileOneSR(cfg)


@register_model("mobileone_sr_tiny", MobileOneSRConfig(channels=8, blocks=2, branches=2, anchor=True),
                "test-size model for unit tests and smoke runs")
def mobileone_sr_tiny(cfg: MobileOneSRConfig) -> MobileOneSR:
    return MobileOneSR(cfg)
