"""QATIE's two ops without a plain int8 kernel: concat of differently scaled inputs, InstanceNorm.

Both are checked against the TFLite artifact bit for bit (0 LSB) on random weights and inputs;
the concat case is forced onto rounding ties (requantization factor exactly 1/2).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantir.data.task import ModelInfo
from quantir.export import tflite_graph as tg
from quantir.export.api import export_artifacts
from quantir.export.config import ExportConfig
from quantir.models.protocol import RestorationModel
from quantir.numerics import TANH_QPARAMS
from quantir.quant.api import calibrate, convert, prepare_ptq
from quantir.quant.graph_ops import REQUANT_META
from tests.conftest import natural_image


def _images(n=3, h=40, w=56, seed=0):
    return [natural_image(h, w, seed=seed + k) for k in range(n)]


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


class TanhConcatNet(RestorationModel):
    """QATIE's fusion in small: cat(tanh skip at TFLite's fixed 1/128 scale, a conv feature) -> 1x1."""

    def __init__(self):
        super().__init__()
        self.info = ModelInfo(task="enhance", scale=1, pixel_max=1.0)
        self.skip, self.feat, self.fuse = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(16, 3, 1)

    def forward(self, x):
        return torch.clamp(x + 0.2 * self.fuse(torch.cat([torch.tanh(2 * self.skip(x)), self.feat(x)], 1)), 0, 1)


def _module_after(q, target):
    gm = q.graph_module
    node = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target == target)
    return gm.get_submodule(next(iter(node.users)).target)


def test_concat_requantization_is_bit_exact_on_rounding_ties(tmp_path):
    torch.manual_seed(0)
    model = TanhConcatNet().eval()
    q = prepare_ptq(model, torch.rand(2, 3, 16, 16))
    requant = [n for n in q.graph_module.graph.nodes if n.meta.get(REQUANT_META)]
    assert len(requant) == 1  # the tanh input only: the conv feature takes the concat's range directly
    calibrate(q, [_tensor(i) for i in _images(4, 32, 32, seed=20)])
    cat_fq = _module_after(q, torch.ops.aten.cat.default)
    with torch.no_grad():  # concat scale = 2 x tanh's: every odd tanh code requantizes onto a .5 tie
        cat_fq.scale.fill_(2 * TANH_QPARAMS[0])
        cat_fq.zero_point.fill_(0)
    codes = []
    hook = _module_after(q, torch.ops.aten.tanh.default).register_forward_hook(
        lambda m, i, out: codes.append(torch.round(out / TANH_QPARAMS[0]).long()))
    images = _images()
    res = export_artifacts(convert(q), model, tmp_path, ExportConfig(formats=("tflite",)), parity_images=images,
                           reference=q)
    hook.remove()
    odd = torch.cat([c.flatten() for c in codes]).remainder(2).float().mean()
    assert odd > 0.3, odd  # the check really runs on ties
    tfl = res["parity"].backends["tflite"]
    assert tfl.max_lsb == 0 and tfl.all_int8, tfl
    ops = [r["op"] for r in tg.op_table(tg.read((tmp_path / "model_int8.tflite").read_bytes()))]
    assert "CONCATENATION" in ops and "MUL" in ops


class NormNet(RestorationModel):
    def __init__(self):
        super().__init__()
        self.info = ModelInfo(task="enhance", scale=1, pixel_max=1.0)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=True)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        return torch.clamp(x + 0.1 * self.b(F.leaky_relu(self.norm(self.a(x)), 0.2)), 0, 1)


def test_instance_norm_float_island_is_bit_exact_at_any_size(tmp_path):
    torch.manual_seed(0)
    model = NormNet().eval()
    q = prepare_ptq(model, torch.rand(2, 3, 16, 16))
    calibrate(q, [_tensor(i) for i in _images(4, 32, 32, seed=20)])
    # Two sizes (the artifact must be dynamic), one of them large: float sums over a whole photo
    # differ in their last bits between runtimes, which a float island must not turn into levels.
    images = _images(2, 40, 56) + _images(1, 360, 480, seed=7)
    res = export_artifacts(convert(q), model, tmp_path, ExportConfig(formats=("tflite", "onnx")),
                           parity_images=images, reference=q)
    assert res["files"]["tflite_int8"]["dynamic"]
    tfl, onnx = res["parity"].backends["tflite"], res["parity"].backends["onnx"]
    assert tfl.max_lsb == 0 and onnx.max_lsb == 0, (tfl, onnx)
    assert not tfl.all_int8 and {"SUM", "ROUND", "RSQRT"} <= set(tfl.non_int8_ops)  # the island is named
    # codes, their squares' two halves and the pixel count: 4 exact totals of 3 SUMs each
    assert tfl.float_op_counts["SUM"] == 12 and tfl.int8_status.startswith("no: ")
    assert "MEAN" not in tfl.non_int8_ops  # a runtime's own float mean is what moved levels
    with torch.no_grad():  # and it computes the norm: the int8 model stays close to the float one
        x = _tensor(images[0])
        assert F.mse_loss(q(x), model(x)) < 1e-4


class PointwiseNormNet(RestorationModel):
    """1x1 convs around an InstanceNorm: moving pixels around moves the outputs the same way."""

    def __init__(self):
        super().__init__()
        self.info = ModelInfo(task="enhance", scale=1, pixel_max=1.0)
        self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 3, 1)
        self.norm = nn.InstanceNorm2d(16, affine=True)

    def forward(self, x):
        return torch.clamp(x + 0.1 * self.b(self.norm(self.a(x))), 0, 1)


def test_instance_norm_statistics_do_not_depend_on_the_summation_order():
    """The island's statistics are the same bits however the pixels are ordered (so however a runtime
    sums them): a float mean over a 288x384 tensor changes its last bits under such a shuffle."""
    torch.manual_seed(0)
    model = PointwiseNormNet().eval()
    q = prepare_ptq(model, torch.rand(2, 3, 16, 16))
    calibrate(q, [_tensor(i) for i in _images(4, 32, 32, seed=20)])
    gm = q.graph_module
    island_outputs = [n for n in gm.graph.nodes if n.meta.get("quantir_float_island") == "output"]
    assert len(island_outputs) == 2
    seen: list[list[torch.Tensor]] = []
    hooks = [gm.get_submodule(next(iter(n.users)).target).register_forward_pre_hook(
        lambda m, args: seen[-1].append(args[0].detach().clone())) for n in island_outputs]
    x = _tensor(natural_image(288, 384, seed=3))
    perm = torch.randperm(288 * 384, generator=torch.Generator().manual_seed(1))
    shuffled = x.flatten(2)[..., perm].reshape(x.shape)
    outputs = []
    with torch.no_grad():
        for image in (x, shuffled):
            seen.append([])
            outputs.append(q(image))
    for h in hooks:
        h.remove()
    for a, b in zip(*seen):  # the float statistics, before their int8 grid: bit-identical
        assert torch.equal(a, b)
    assert torch.equal(outputs[0].flatten(2)[..., perm], outputs[1].flatten(2))
    with torch.no_grad():  # the check is sensitive: plain float means of the same features move
        naive = [model.a(image).mean((2, 3)) for image in (x, shuffled)]
    assert not torch.equal(*naive)


def test_a_users_instance_norm_is_reported_as_a_float_island():
    import pytest

    from quantir.models.protocol import as_restoration_model
    from quantir.quant.support import UnsupportedModelError, inspect_model

    class UserNorm(nn.Module):  # a plain module: user networks go through the op report
        def __init__(self):
            super().__init__()
            self.a, self.norm, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.Conv2d(8, 3, 1)

        def forward(self, x):
            return self.b(self.norm(self.a(x)))

    model = as_restoration_model(UserNorm().eval(), ModelInfo(task="enhance", scale=1, pixel_max=1.0))
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(UnsupportedModelError, match="instance_norm at norm"):
        inspect_model(model, x)
    _, problems = inspect_model(model, x, allow_float_ops=True)
    assert [(p.op, p.kind) for p in problems] == [("instance_norm", "float_island")]


def test_the_norm_island_stores_only_the_constants_of_its_first_formulation():
    """QAT checkpoints of the paper net written before the exact statistics must keep loading:
    the state dict holds the same island constants as then (minus one and eps per norm), no more."""
    q = prepare_ptq(NormNet().eval(), torch.rand(2, 3, 16, 16))
    keys = sorted(k.split(".")[-1] for k in q.state_dict() if "_quantir_norm_" in k)
    assert keys == ["_quantir_norm_eps_0", "_quantir_norm_minus_one_0"]
    buffers = [name for name, _ in q.graph_module.named_buffers() if name.startswith("_quantir_norm_")]
    assert len(buffers) > len(keys)  # the others exist, outside the state dict
