"""QATIE photo enhancer (HybridMixUNet, docs/papers.md 1.2) and its deployable INT8 variant.

``qatie_unet`` follows the reference exactly (915,331 parameters at c=32): gated DownBlocks
(two stride-2 conv branches, tanh, their product as the main path, the raw branches kept as
skips), HINet-style refiners with InstanceNorm and LeakyReLU(0.2), nearest-resize UpBlocks,
1x1 fusions, a head conv and a clamped global residual. RGB in [0, 1].

``qatie_unet_int8`` is the same topology changed where int8 breaks it (each change is a config
field, measured in BENCHMARKS.md):

* ``norm="batch"``: InstanceNorm exports as a float island (its mean, variance and rsqrt in
  float between int8 tensors, see quant/quantizer.py); BatchNorm folds into the conv before QAT
  and leaves no float op.
* ``act="relu"``: ReLU fuses into the conv (one op fewer per layer). LeakyReLU is exact too since
  its fake-quant reproduces XNNPACK's int8 LEAKY_RELU (quant/exact.py); before that it drifted
  5-8 LSB over 15 layers in the toolchain probe.
* ``split_fusion=True``: ``conv1x1(cat(up, s, x_a, x_b))`` becomes ``sum_i conv1x1_i(input_i)``,
  the same function and parameter count, so the [-1, 1] tanh skips are no longer requantized
  onto the wide decoder range of a shared concat scale (17 and 5 levels in the reference TFLite).
* upsampling: the float forward resizes to the skip's size (any input size). On sizes divisible
  by 8 that is exactly nearest x2, so the exported core of both nets computes it as concat +
  depth-to-space (dynamic H and W, no baked resize sizes); runtimes pad and crop other sizes.
* ``zero_init_head=True`` (default for both nets): the net starts as the identity, so the output
  clamp does not kill early gradients. Measured on the paper net (c=16, 300 steps, lr 1e-3): with a
  Kaiming-initialised head the clamp saturates and validation stays at 7-9 dB; zero-initialised,
  30.0 dB. It changes no parameter count and no deployed op.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantir.config import check_choices
from quantir.data.task import ModelInfo, Task
from quantir.errors import require
from quantir.models.layers import conv1x1, conv3x3, fuse_conv_bn, upsample2x_nearest
from quantir.models.protocol import RestorationModel
from quantir.models.registry import register_model


@dataclasses.dataclass(frozen=True)
class QATIEConfig:
    channels: int = 32
    norm: Literal["instance", "batch", "none"] = "instance"
    act: Literal["leaky", "relu"] = "leaky"  # LeakyReLU(0.2) or ReLU
    split_fusion: bool = False
    # Both export nearest x2 as depth-to-space (sizes % 8 == 0); the field names the published
    # (resize) and the int8 (d2s) variant and keeps older checkpoints' configs loadable.
    upsample: Literal["resize", "d2s"] = "resize"
    global_residual: bool = True
    zero_init_head: bool = True

    def __post_init__(self):
        check_choices(self)
        require(self.channels > 0, "qatie: channels must be positive")


def _act(kind: str) -> nn.Module:
    return nn.LeakyReLU(0.2) if kind == "leaky" else nn.ReLU()


class DownBlock(nn.Module):
    """Gated encoder block: (tanh(a), tanh(a) * tanh(b), tanh(b)) at half resolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_a, self.conv_b = conv3x3(cin, cout, stride=2), conv3x3(cin, cout, stride=2)

    def forward(self, x):
        xa, xb = torch.tanh(self.conv_a(x)), torch.tanh(self.conv_b(x))
        return xa, xa * xb, xb


class Refiner(nn.Module):
    """HINet-like UNetConvBlock: [act(norm(conv3x3)), conv1x1] -> two convs, plus a 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, norm: str, act: str):
        super().__init__()
        self.conv_in = conv3x3(cin, cin)
        self.norm = {"instance": lambda: nn.InstanceNorm2d(cin, affine=True),
                     "batch": lambda: nn.BatchNorm2d(cin), "none": nn.Identity}[norm]()
        self.act1, self.act2, self.act3 = _act(act), _act(act), _act(act)
        self.parallel = conv1x1(cin, cin)
        self.conv2 = conv3x3(2 * cin, cout)
        self.conv3 = conv3x3(cout, cout)
        self.shortcut = conv1x1(2 * cin, cout)

    def forward(self, x):
        cat = torch.cat([self.act1(self.norm(self.conv_in(x))), self.parallel(x)], dim=1)
        return self.act3(self.conv3(self.act2(self.conv2(cat)))) + self.shortcut(cat)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.norm, nn.BatchNorm2d):
            w, b = fuse_conv_bn(self.conv_in.weight, self.conv_in.bias, self.norm)
            self.conv_in.weight.copy_(w)
            self.conv_in.bias.copy_(b)
            self.norm = nn.Identity()


class Fusion(nn.Module):
    """1x1 conv over several inputs: one conv on their concat, or (split) a sum of per-input convs."""

    def __init__(self, in_channels: list[int], cout: int, split: bool):
        super().__init__()
        self.split = split
        if split:
            self.convs = nn.ModuleList(conv1x1(c, cout, bias=(i == 0)) for i, c in enumerate(in_channels))
        else:
            self.conv = conv1x1(sum(in_channels), cout)

    def forward(self, inputs: list[torch.Tensor]):
        if not self.split:
            return self.conv(torch.cat(inputs, dim=1))
        y = self.convs[0](inputs[0])
        for conv, t in zip(self.convs[1:], inputs[1:]):
            y = y + conv(t)
        return y


class QATIEUNet(RestorationModel):
    def __init__(self, cfg: QATIEConfig):
        super().__init__()
        self.cfg = cfg
        c, n, a = cfg.channels, cfg.norm, cfg.act
        # The exported core upsamples with depth-to-space for both variants (see ``_up``), so its
        # H and W are multiples of 8; runtimes pad and crop any other size.
        self.info = ModelInfo(task=Task.ENHANCE, scale=1, pixel_max=1.0, size_multiple=8)
        self.down1, self.down2 = DownBlock(3, c), DownBlock(c, 2 * c)
        self.refine_s2, self.refine_s4 = Refiner(c, c, n, a), Refiner(2 * c, 2 * c, n, a)
        self.bottleneck = Refiner(2 * c, 4 * c, n, a)
        self.up4, self.up2, self.up1 = conv3x3(4 * c, 2 * c), conv3x3(2 * c, c), conv3x3(c, c)
        self.fuse4 = Fusion([2 * c, 2 * c, 2 * c, 2 * c], 2 * c, cfg.split_fusion)
        self.fuse2 = Fusion([c, c, c, c], c, cfg.split_fusion)
        self.refine_fuse4, self.refine_fuse2 = Refiner(2 * c, 2 * c, n, a), Refiner(c, c, n, a)
        self.head = conv3x3(c, 3)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cfg.zero_init_head:
            nn.init.zeros_(self.head.weight)

    def _up(self, x, like, exact: bool):
        if exact:
            return upsample2x_nearest(x)
        # Any size: nearest resize to the skip's size. When H and W are multiples of 8 (the only
        # sizes the exported core accepts) this is exactly the x2 depth-to-space form.
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    def core(self, x, exact: bool = False):
        xa1, xg1, xb1 = self.down1(x)
        s2 = self.refine_s2(xg1)
        xa2, xg2, xb2 = self.down2(s2)
        s4 = self.refine_s4(xg2)
        bott = self.bottleneck(F.max_pool2d(s4, 2))
        d4 = self.refine_fuse4(self.fuse4([self.up4(self._up(bott, s4, exact)), s4, xa2, xb2]))
        d2 = self.refine_fuse2(self.fuse2([self.up2(self._up(d4, s2, exact)), s2, xa1, xb1]))
        delta = self.head(self.up1(self._up(d2, x, exact)))
        y = x + delta if self.cfg.global_residual else delta
        return torch.clamp(y, 0.0, 1.0)

    def forward(self, x):
        return self.core(x)

    def export_module(self) -> nn.Module:
        """The graph that gets quantized and converted: the core on sizes divisible by 8, where the
        paper's nearest resize to the skip's size is exactly x2 and exports as depth-to-space
        (dynamic H and W, no baked resize sizes)."""
        return _Core(self)


class _Core(nn.Module):
    def __init__(self, net: QATIEUNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.core(x, exact=True)


@register_model("qatie_unet", QATIEConfig(), "QATIE HybridMixUNet (paper, c=32: 915,331 params), InstanceNorm")
def qatie_unet(cfg: QATIEConfig) -> QATIEUNet:
    return QATIEUNet(cfg)


@register_model("qatie_unet_int8",
                QATIEConfig(norm="batch", act="relu", split_fusion=True, upsample="d2s", zero_init_head=True),
                "QATIE topology made full-int8: folded BN, ReLU, split skip fusions, depth-to-space upsampling")
def qatie_unet_int8(cfg: QATIEConfig) -> QATIEUNet:
    return QATIEUNet(cfg)
