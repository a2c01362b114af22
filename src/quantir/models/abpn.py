"""ABPN (NJU, MAI 2021 reference) and an EDSR-style FP32 teacher for distillation.

ABPN (docs/papers.md 4.3): conv3x3(3->28)+ReLU, 4 x [conv3x3(28->28)+ReLU], conv3x3(28->27)+ReLU,
conv3x3(27->27), add the anchor (input repeated 9x on channels), depth-to-space(3), clip to
[0, 255]. 42,539 parameters, pixel values 0..255. The original is TF, so its depth-to-space is
already DCR and its anchor is a plain 9-fold concatenation, exactly as here.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from quantir.data.task import ModelInfo, Task
from quantir.models.layers import ResBlock, anchor, conv3x3, depth_to_space
from quantir.models.protocol import RestorationModel
from quantir.models.registry import register_model


@dataclasses.dataclass(frozen=True)
class ABPNConfig:
    channels: int = 28
    mid_layers: int = 4
    scale: int = 3


class ABPN(RestorationModel):
    def __init__(self, cfg: ABPNConfig):
        super().__init__()
        self.cfg = cfg
        self.info = ModelInfo(task=Task.SR, scale=cfg.scale, pixel_max=255.0)
        c, s = cfg.channels, cfg.scale
        layers = [conv3x3(3, c), nn.ReLU()]
        for _ in range(cfg.mid_layers):
            layers += [conv3x3(c, c), nn.ReLU()]
        layers += [conv3x3(c, 3 * s * s), nn.ReLU(), conv3x3(3 * s * s, 3 * s * s)]
        self.body = nn.Sequential(*layers)
        self.clamp_output = True

    def forward(self, x):
        y = self.body(x) + anchor(x, self.cfg.scale)
        if self.clamp_output:
            y = torch.clamp(y, 0.0, 255.0)
        return depth_to_space(y, self.cfg.scale)


@register_model("abpn", ABPNConfig(), "ABPN x3 (MAI 2021): 42,539 params, anchor residual, depth-to-space")
def abpn(cfg: ABPNConfig) -> ABPN:
    return ABPN(cfg)


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    channels: int = 48
    res_blocks: int = 8
    scale: int = 3


class SRTeacher(RestorationModel):
    """EDSR-style FP32 teacher: residual blocks with 0.2 residual scaling, global skip, anchor."""

    def __init__(self, cfg: TeacherConfig):
        super().__init__()
        self.cfg = cfg
        self.info = ModelInfo(task=Task.SR, scale=cfg.scale, pixel_max=255.0)
        c, s = cfg.channels, cfg.scale
        self.head = conv3x3(3, c)
        self.body = nn.Sequential(*[ResBlock(c, res_scale=0.2) for _ in range(cfg.res_blocks)], conv3x3(c, c))
        self.tail = conv3x3(c, 3 * s * s)
        self.clamp_output = True

    def forward(self, x):
        f = self.head(x / 255.0)
        y = self.tail(f + self.body(f)) * 255.0 + anchor(x, self.cfg.scale)
        if self.clamp_output:
            y = torch.clamp(y, 0.0, 255.0)
        return depth_to_space(y, self.cfg.scale)


@register_model("sr_teacher", TeacherConfig(), "FP32 distillation teacher: EDSR-style, 48 ch, 8 res blocks (~0.35 M)")
def sr_teacher(cfg: TeacherConfig) -> SRTeacher:
    return SRTeacher(cfg)
