"""Building blocks shared by the models, written so the int8 path can lower them cleanly."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class NHWC(nn.Module):
    """NHWC in and out around an NCHW model: the layout of every exported graph (TFLite's own).

    The permutes sit inside the exported graph, so the quantized artifact takes and returns int8
    NHWC tensors directly.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """TFLite/TF ``depth_to_space`` (DCR order): out[c, h*s+i, w*s+j] = in[(i*s+j)*C + c, h, w].

    PyTorch's PixelShuffle uses the CRD order instead. Both are the same function class (a fixed
    permutation of the producing conv's output channels), but only DCR maps to TFLite's single
    DEPTH_TO_SPACE op, and then an image-space anchor is simply the input concatenated s*s times.
    """
    b, c, h, w = x.shape
    oc = c // (block * block)
    x = x.view(b, block, block, oc, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(b, oc, h * block, w * block)


def crd_to_dcr_channels(out_channels: int, block: int) -> torch.Tensor:
    """Index map turning a PixelShuffle (CRD) conv into a DCR one: ``w_dcr = w_crd[idx]``."""
    oc = out_channels // (block * block)
    return torch.tensor([c * block * block + k for k in range(block * block) for c in range(oc)])


class DepthToSpace(nn.Module):
    def __init__(self, block: int):
        super().__init__()
        self.block = block

    def forward(self, x):
        return depth_to_space(x, self.block)


def anchor(x: torch.Tensor, block: int) -> torch.Tensor:
    """Image-space residual for DCR depth-to-space (ABPN): each sub-pixel starts from its LR pixel."""
    return torch.cat([x] * (block * block), dim=1)


def symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror padding that repeats the edge pixel (numpy "symmetric", TFLite MIRROR_PAD SYMMETRIC).

    Written as slices and concats of the input: both are int8 ops that keep the input's grid (scale
    and zero point), so a padded int8 input is the same codes, and the slices count from the end,
    so the graph holds no size constant and dynamic-shape artifacts keep working.
    """
    slice_ = torch.ops.aten.slice.Tensor
    for dim in (2, 3):
        head = [slice_(x, dim, i, i + 1) for i in reversed(range(pad))]
        tail = [slice_(x, dim, -1 - i, -i) if i else slice_(x, dim, -1) for i in range(pad)]
        x = torch.cat(head + [x] + tail, dim=dim)
    return x


def upsample2x_nearest(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling as concat + depth-to-space: no size constant, so dynamic int8 TFLite works."""
    return depth_to_space(torch.cat([x, x, x, x], dim=1), 2)


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class ResBlock(nn.Module):
    """EDSR's residual block: x + res_scale * conv3x3(ReLU(conv3x3(x)))."""

    def __init__(self, c: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1, self.conv2, self.act = conv3x3(c, c), conv3x3(c, c), nn.ReLU()
        self.res_scale = res_scale

    def forward(self, x):
        y = self.conv2(self.act(self.conv1(x)))
        return x + (y if self.res_scale == 1.0 else self.res_scale * y)  # no MUL in the graph at 1


def conv1x1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


def fuse_conv_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold inference-mode BatchNorm into the preceding conv: exact up to float rounding."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    b = bias if bias is not None else torch.zeros_like(bn.running_mean)
    w = weight * (gamma / std).reshape(-1, 1, 1, 1)
    return w, beta + (b - bn.running_mean) * gamma / std
