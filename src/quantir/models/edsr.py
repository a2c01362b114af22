"""EDSR-baseline (Lim et al. 2017), the network of the ODM lineage's tables (PAMS, DAQ, DDTB, ODM).

Exactly the reference structure: MeanShift (subtract the DIV2K RGB mean x 255), head conv3x3(3->64),
16 residual blocks [conv3x3 -> ReLU -> conv3x3] with res_scale 1, a body conv3x3 and the global
skip, the sub-pixel upsampler (x2, x3: one conv3x3(64 -> 64 s^2) + depth-to-space; x4: two x2
steps), tail conv3x3(64->3), add the mean back. Parameters 1,369,859 (x2), 1,554,499 (x3),
1,517,571 (x4); the mean is a buffer, as the reference's frozen MeanShift convs are not trained.
The depth-to-space is DCR (TensorFlow's order, an int8 op), which is the reference's CRD
PixelShuffle with the upsampling conv's output channels permuted: same function, same count.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from quantir.data.task import ModelInfo, Task
from quantir.models.layers import ResBlock, conv3x3, depth_to_space
from quantir.models.protocol import RestorationModel
from quantir.models.registry import register_model

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)  # the reference code's MeanShift, rgb_range 255


@dataclasses.dataclass(frozen=True)
class EDSRConfig:
    channels: int = 64
    res_blocks: int = 16
    scale: int = 4


class Upsampler(nn.Module):
    def __init__(self, c: int, scale: int):
        super().__init__()
        steps = [2, 2] if scale == 4 else [scale]
        self.convs = nn.ModuleList(conv3x3(c, c * s * s) for s in steps)
        self.steps = steps

    def forward(self, x):
        for conv, s in zip(self.convs, self.steps):
            x = depth_to_space(conv(x), s)
        return x


class EDSR(RestorationModel):
    def __init__(self, cfg: EDSRConfig):
        super().__init__()
        if cfg.scale not in (2, 3, 4):
            raise ValueError(f"edsr_baseline scale must be 2, 3 or 4, got {cfg.scale}")
        self.cfg = cfg
        self.info = ModelInfo(task=Task.SR, scale=cfg.scale, pixel_max=255.0)
        c = cfg.channels
        self.register_buffer("neg_mean", -255.0 * torch.tensor(DIV2K_RGB_MEAN).reshape(1, 3, 1, 1))
        self.head = conv3x3(3, c)
        self.body = nn.Sequential(*[ResBlock(c) for _ in range(cfg.res_blocks)], conv3x3(c, c))  # res_scale 1
        self.upsample = Upsampler(c, cfg.scale)
        self.tail = conv3x3(c, 3)
        self.clamp_output = True

    def forward(self, x):
        f = self.head(x + self.neg_mean)
        y = self.tail(self.upsample(f + self.body(f))) - self.neg_mean
        return torch.clamp(y, 0.0, 255.0) if self.clamp_output else y


@register_model("edsr_baseline", EDSRConfig(), "EDSR-baseline x4 (ODM lineage's net): 16 blocks, 64 ch, 1.52 M params")
def edsr_baseline(cfg: EDSRConfig) -> EDSR:
    return EDSR(cfg)


@register_model("edsr_baseline_small", EDSRConfig(channels=32, res_blocks=4),
                "EDSR-baseline structure at 32 ch, 4 blocks: trains on 2 CPU cores in the benchmark budget")
def edsr_baseline_small(cfg: EDSRConfig) -> EDSR:
    return EDSR(cfg)
