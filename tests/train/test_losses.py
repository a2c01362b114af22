import math

import pytest
import torch

from quantir.train.losses import confidence_kd, dct2, outlier_loss, psnr_y_loss, reconstruction_loss
from quantir.train.config import LossConfig


def test_dct_matches_scipy_unnormalised():
    scipy_fft = pytest.importorskip("scipy.fft")
    x = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    ref = scipy_fft.dctn(x.numpy(), axes=(-2, -1), norm=None)
    assert torch.allclose(dct2(x), torch.from_numpy(ref), atol=1e-9)


def test_psnr_y_loss_value():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.1)
    mse = (0.1 * (65.481 + 128.553 + 24.966) / 255.0) ** 2
    expected = (50 - 20 * math.log10(1 / math.sqrt(mse + 1e-8))) / 100
    assert psnr_y_loss(a, b).item() == pytest.approx(expected, rel=1e-5)


def test_confidence_weights_follow_teacher_error():
    target = torch.zeros(1, 3, 2, 2)
    teacher = torch.tensor([0.0, 0.5]).view(1, 1, 1, 2).expand(1, 3, 2, 2)  # right column: bad teacher
    pred = torch.ones(1, 3, 2, 2)
    # w = clip(exp(-10 e)): left e=0 -> 1 -> clipped to 0.75; right e=0.5 -> 0.0067 -> clipped to 0.1
    expected = (0.75 * 1.0 + 0.1 * 0.5) / 2
    assert confidence_kd(pred, teacher, target, 10.0, 0.1, 0.75).item() == pytest.approx(expected, rel=1e-6)


def test_outlier_weights_are_detached_and_terms_logged():
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 8, 8, requires_grad=True)
    target = torch.rand(2, 3, 8, 8)
    outlier_loss(pred, target).backward()
    # With the weights w detached, d/dpred mean(|d| w) = sign(d) w / N exactly; a gradient through w
    # (tanh of the normalised deviation) would add terms and break this equality.
    d = (pred - target).detach()
    sigma = d.std(dim=(2, 3), keepdim=True) / math.sqrt(2.0)
    w = torch.tanh((d - d.mean(dim=(2, 3), keepdim=True)).abs() / (sigma + 1e-6))
    assert torch.allclose(pred.grad, torch.sign(d) * w / d.numel(), atol=1e-7)
    total, terms = reconstruction_loss(LossConfig(l1=1.0, dct=0.1, cosine=1.0), torch.rand(1, 3, 8, 8),
                                       torch.rand(1, 3, 8, 8))
    assert set(terms) == {"l1", "dct", "cos"} and total.item() > 0
