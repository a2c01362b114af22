"""Loss terms of the three papers, on images scaled to [0, 1].

* AIO_MAI: Charbonnier (eps 1e-3), DCT-L1 over the whole patch with the unnormalised DCT-II
  (scipy ``norm=None``: factor 2, no 1/sqrt(N); its size grows with the patch, hence the small
  weights), confidence-weighted output distillation.
* QATIE: L_PSNR = (50 - PSNR_Y) / 100 per image, L_cos = 1 - cos(pred, gt) per image, and the
  outlier-aware L1 with detached weights tanh(|d - mu| / (sigma + 1e-6)), sigma = std / sqrt(2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from quantir.train.config import LossConfig

_Y = torch.tensor([65.481, 128.553, 24.966]) / 255.0


def charbonnier(pred, target, eps: float = 1e-3):
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def _dct_matrix(n: int, device, dtype) -> torch.Tensor:
    k = torch.arange(n, device=device, dtype=dtype)[:, None]
    i = torch.arange(n, device=device, dtype=dtype)[None, :]
    return 2.0 * torch.cos(math.pi * k * (2 * i + 1) / (2 * n))


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised 2-D DCT-II over the last two dims (equals scipy.fft.dctn(norm=None))."""
    h, w = x.shape[-2:]
    return _dct_matrix(h, x.device, x.dtype) @ x @ _dct_matrix(w, x.device, x.dtype).T


def dct_l1(pred, target):
    return (dct2(pred) - dct2(target)).abs().mean()


def rgb_to_y01(x: torch.Tensor) -> torch.Tensor:
    return (x * _Y.to(x.device, x.dtype).view(1, 3, 1, 1)).sum(1) + 16.0 / 255.0


def psnr_y_loss(pred, target):
    mse = ((rgb_to_y01(pred) - rgb_to_y01(target)) ** 2).flatten(1).mean(1)
    psnr = 20.0 * torch.log10(1.0 / torch.sqrt(mse + 1e-8))
    return ((50.0 - psnr) / 100.0).mean()


def cosine_loss(pred, target):
    return (1.0 - F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1)).mean()


def outlier_loss(pred, target):
    d = pred - target
    mu = d.mean(dim=(2, 3), keepdim=True)
    sigma = d.std(dim=(2, 3), keepdim=True) / math.sqrt(2.0)
    w = torch.tanh((d - mu).abs() / (sigma + 1e-6)).detach()
    return (d.abs() * w).mean()


def confidence_kd(pred, teacher, target, gamma: float, w_min: float, w_max: float, confidence: bool = True):
    """mean_p w(p) |pred - teacher| with w = clip(exp(-gamma * e(p))), e = teacher's own L1 error."""
    diff = (pred - teacher).abs().mean(1)
    if not confidence:
        return diff.mean()
    err = (teacher - target).abs().mean(1)
    w = torch.clamp(torch.exp(-gamma * err), w_min, w_max).detach()
    return (w * diff).mean()


def reconstruction_loss(cfg: LossConfig, pred, target, teacher=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the enabled terms; returns the total and each term's value for logging."""
    terms = {}
    if cfg.l1:
        terms["l1"] = (cfg.l1, F.l1_loss(pred, target))
    if cfg.charbonnier:
        terms["charb"] = (cfg.charbonnier, charbonnier(pred, target))
    if cfg.dct:
        terms["dct"] = (cfg.dct, dct_l1(pred, target))
    if cfg.psnr_y:
        terms["psnr_y"] = (cfg.psnr_y, psnr_y_loss(pred, target))
    if cfg.cosine:
        terms["cos"] = (cfg.cosine, cosine_loss(pred, target))
    if cfg.outlier:
        terms["outlier"] = (cfg.outlier, outlier_loss(pred, target))
    if cfg.kd and teacher is not None:
        terms["kd"] = (cfg.kd, confidence_kd(pred, teacher, target, cfg.kd_gamma, cfg.kd_w_min, cfg.kd_w_max,
                                             cfg.kd_confidence))
    if not terms:
        raise ValueError("no loss term is enabled")
    total = sum(w * v for w, v in terms.values())
    return total, {k: float(v.detach()) for k, (_, v) in terms.items()}
