"""LeakyReLU (QATIE's activation): fake-quant equals XNNPACK's int8 LEAKY_RELU kernel bit for bit."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from quantir.data.task import ModelInfo
from quantir.export import tflite_graph as tg
from quantir.export.api import export_artifacts
from quantir.export.config import ExportConfig
from quantir.models.layers import depth_to_space
from quantir.models.protocol import RestorationModel
from quantir.quant.api import calibrate, convert, prepare_ptq
from quantir.quant.exact import exact_leaky_relu, xnnpack_leaky_relu_multipliers
from tests.conftest import natural_image


class LeakyNet(RestorationModel):
    def __init__(self, slope):
        super().__init__()
        self.info = ModelInfo(task="sr", scale=2, pixel_max=1.0)
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 12, 3, padding=1)
        self.act = nn.LeakyReLU(slope, inplace=True)

    def forward(self, x):
        return depth_to_space(self.c2(self.act(self.c1(x))), 2)


@pytest.mark.parametrize("slope", [0.2])  # QATIE's slope
def test_leaky_relu_artifact_is_bit_exact(slope, tmp_path):
    torch.manual_seed(0)
    model = LeakyNet(slope).eval()
    q = prepare_ptq(model, torch.rand(2, 3, 16, 16))
    calibrate(q, [torch.rand(2, 3, 16, 16) for _ in range(4)])
    images = [natural_image(40, 56, seed=k) for k in range(3)]
    res = export_artifacts(convert(q), model, tmp_path, ExportConfig(formats=("tflite",)), parity_images=images,
                           reference=q)
    tfl = res["parity"].backends["tflite"]
    assert tfl.max_lsb == 0 and tfl.all_int8, tfl
    ops = {r["op"] for r in tg.op_table(tg.read((tmp_path / "model_int8.tflite").read_bytes()))}
    assert "LEAKY_RELU" in ops  # one int8 kernel, not a rewrite into several


def test_exact_leaky_relu_rounds_ties_up_where_float_rounds_to_even():
    s_in, z_in, s_out, z_out, slope = 0.05, 3, 0.04, -20, 0.2
    codes = torch.arange(-128, 128, dtype=torch.float32)
    x = (codes - z_in) * s_in
    got = exact_leaky_relu(x, slope, torch.tensor(s_in), torch.tensor(float(z_in)), torch.tensor(s_out),
                           torch.tensor(float(z_out)))
    pos, neg = xnnpack_leaky_relu_multipliers(s_in, s_out, slope)
    acc = codes.numpy().astype(np.int64) - z_in
    want = np.clip((acc * np.where(acc >= 0, pos, neg) + (z_out << 8) + 128) >> 8, -128, 127)
    assert np.array_equal(np.round(got.numpy() / s_out).astype(np.int64) + z_out, want)
    float_q = np.clip(np.round(torch.nn.functional.leaky_relu(x, slope).numpy() / s_out) + z_out, -128, 127)
    assert (float_q != want).any()  # the plain float requantization is not the kernel
