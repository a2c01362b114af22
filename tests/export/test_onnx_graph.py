"""The ONNX rewrites make onnxruntime compute the int8 kernels' integers (export/onnx_graph.py)."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from quantir.export import onnx_graph
from quantir.quant.exact import exact_add


def _session(model: onnx.ModelProto, optimized_path=None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _add_model(sa, za, sb, zb, so, zo) -> onnx.ModelProto:
    """int8 a, b -> DQ -> Add -> Q -> int8, the way the exporter spells one quantized add."""
    qparams = [(np.float32(s), np.int8(z)) for s, z in ((sa, za), (sb, zb), (so, zo))]
    return onnx_graph._single_add_model(qparams, np.int8)


@pytest.mark.parametrize("scales", [(0.02, 3, 0.04, -7, 0.05, 2), (0.1, 0, 0.05, 0, 0.1, -5),
                                    (0.0123, -128, 0.0077, 20, 0.0301, -10)])
def test_integer_add_equals_the_xnnpack_add_emulation_on_every_input_pair(scales):
    sa, za, sb, zb, so, zo = scales
    model = _add_model(*scales)
    onnx_graph.integer_add(model)
    onnx.checker.check_model(model)
    a, b = (g.ravel().astype(np.int8) for g in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)))
    got = _session(model).run(None, {"a": a, "b": b})[0].astype(int)
    fa, fb = (torch.from_numpy((v.astype(np.float32) - z) * np.float32(s)) for v, s, z in ((a, sa, za), (b, sb, zb)))
    ref = exact_add(fa, fb, sa, za, sb, zb, so, zo).numpy() / np.float32(so) + zo
    assert np.array_equal(got, np.round(ref).astype(int))


def test_plain_qdq_add_rounds_ties_differently_which_is_why_the_rewrite_exists():
    scales = (0.1, 0, 0.05, 0, 0.1, -5)  # b/out = 1/2: many sums land on x.5
    a, b = (g.ravel().astype(np.int8) for g in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)))
    rewritten = _add_model(*scales)
    onnx_graph.integer_add(rewritten)
    got = _session(rewritten).run(None, {"a": a, "b": b})[0].astype(int)
    plain = _session(_add_model(*scales)).run(None, {"a": a, "b": b})[0].astype(int)
    diff = np.abs(plain - got)
    assert diff.max() == 1 and (diff > 0).mean() > 0.05
    assert "Gather" in [n.op_type for n in rewritten.graph.node]  # replaced by the table lookup


def test_tanh_table_matches_dequantize_tanh_quantize_exactly():
    s_in, z_in, s_out, z_out = np.float32(0.031), np.int8(-9), np.float32(1 / 128), np.int8(0)
    table = onnx_graph._table(np.tanh, s_in, z_in, s_out, z_out)
    q = np.arange(-128, 128)
    x = torch.from_numpy((q.astype(np.float32) - z_in) * s_in)
    ref = torch.clamp(torch.round(torch.tanh(x) / s_out) + int(z_out), -128, 127).numpy()
    assert table.dtype == np.int8 and np.array_equal(table.astype(int), ref.astype(int))


def test_every_unet_conv_runs_as_an_integer_kernel_in_onnxruntime(tmp_path):
    """Without the rewrites onnxruntime leaves most U-Net convs in float (the cause of the old 3 LSB gap)."""
    from quantir.export.onnx import export_int8
    from quantir.quant.api import convert
    from tests.export.test_artifacts import _qat_model

    qmodel, _ = _qat_model("qatie_unet_int8")
    path = tmp_path / "unet.onnx"
    export_int8(convert(qmodel), path, {}, {})
    opt = tmp_path / "opt.onnx"
    _session(onnx.load(str(path)), opt)
    ops = collections.Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    assert ops["QLinearConv"] > 0 and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    assert ops["Tanh"] == 0 and ops["Gather"] > 0, ops
