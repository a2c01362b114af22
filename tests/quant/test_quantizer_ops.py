"""Every op family the quantizer annotates ends up in int8: graph check, bit-exactness, TFLite op table."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantir.models import ModelInfo
from quantir.quant.api import convert, prepare_qat, set_phase
from quantir.quant.config import QuantConfig
from quantir.quant.graph_check import float_islands


class ZooNet(nn.Module):
    """conv+ReLU, avg/max pool, bilinear and nearest resize, sigmoid gate, tanh, mul, add, concat,
    a mid-graph clamp and minimum, and a [0, 1] output clamp. A plain nn.Module: what it computes is
    declared with ``info=`` when it is prepared."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 3, 1)
        self.register_buffer("cap", torch.tensor(4.0))

    def forward(self, x):
        f = F.relu(self.c1(x))
        p = F.interpolate(F.avg_pool2d(f, 2), scale_factor=2, mode="bilinear", align_corners=False)
        m = F.interpolate(F.max_pool2d(f, 2), scale_factor=2, mode="nearest")
        g = self.c2(p) * torch.sigmoid(self.c2(m)) + torch.tanh(m)
        g = torch.minimum(torch.clamp(g, -2.0, 6.0), self.cap)
        return torch.clamp(x + self.c3(torch.cat([g, f], dim=1)), 0.0, 1.0)


def test_zoo_model_is_fully_int8_and_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = ZooNet().eval()
    x = torch.rand(2, 3, 16, 16)
    q = prepare_qat(model, x, QuantConfig(), info=ModelInfo(task="enhance", scale=1, pixel_max=1.0, size_multiple=4))
    with torch.no_grad():
        q(torch.rand(4, 3, 16, 16))
    set_phase(q, "learn")
    opt = torch.optim.Adam(q.parameters(), 1e-3)
    for _ in range(3):
        loss = (q(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    c = convert(q, x)
    q.eval()
    y = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(q(y), c(y))
    assert float_islands(c.export_graph) == []

    from quantir.export import tflite as tfe
    from quantir.export import tflite_graph as tg

    info = tfe.export_int8(c, tmp_path / "zoo.tflite", {"task": "enhance", "scale": 1, "pixel_max": 1.0},
                           shape=(16, 16))
    ops = tg.op_table(tg.read((tmp_path / "zoo.tflite").read_bytes()))
    float_ops = sorted({r["op"] for r in ops if any(t != "int8" for t in r["inputs"] + r["outputs"])})
    assert float_ops == [], float_ops
    names = {r["op"] for r in ops}
    assert {"AVERAGE_POOL_2D", "MAX_POOL_2D", "LOGISTIC", "TANH", "MUL", "CONCATENATION"} <= names, names
    assert info["path"]
