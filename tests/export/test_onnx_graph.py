"""The ONNX rewrites make onnxruntime compute the int8 kernels' integers (export/onnx_graph.py)."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from quantir.export import onnx_graph
from quantir.quant.exact import exact_add, exact_mul


def _session(model: onnx.ModelProto, optimized_path=None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _add_model(sa, za, sb, zb, so, zo, op="Add") -> onnx.ModelProto:
    """int8 a, b -> DQ -> Add (Mul) -> Q -> int8, the way the exporter spells one quantized add."""
    qparams = [(np.float32(s), np.int8(z)) for s, z in ((sa, za), (sb, zb), (so, zo))]
    return onnx_graph._single_op_model(op, qparams, np.int8)


@pytest.mark.parametrize("scales", [(0.02, 3, 0.04, -7, 0.05, 2), (0.1, 0, 0.05, 0, 0.1, -5),
                                    (0.0123, -128, 0.0077, 20, 0.0301, -10)])
def test_integer_add_equals_the_xnnpack_add_emulation_on_every_input_pair(scales):
    sa, za, sb, zb, so, zo = scales
    model = _add_model(*scales)
    onnx_graph.integer_add_mul(model)
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
    onnx_graph.integer_add_mul(rewritten)
    got = _session(rewritten).run(None, {"a": a, "b": b})[0].astype(int)
    plain = _session(_add_model(*scales)).run(None, {"a": a, "b": b})[0].astype(int)
    diff = np.abs(plain - got)
    assert diff.max() == 1 and (diff > 0).mean() > 0.05
    assert "Gather" in [n.op_type for n in rewritten.graph.node]  # replaced by the table lookup


# The first: the paper net's InstanceNorm product d * inv_std in a test export (uint8 zero points
# shifted back to int8), where onnxruntime's QLinearMul rounds one product in 1000 off XNNPACK's.
@pytest.mark.parametrize("scales", [(0.0023189731873571873, -19, 0.13954728841781616, -128, 0.02675621211528778, 0),
                                    (0.0078125, 0, 0.0078125, 0, 0.0025846981443464756, -50)])
def test_integer_mul_equals_the_xnnpack_mul_emulation_on_every_input_pair(scales):
    sa, za, sb, zb, so, zo = scales
    a, b = (g.ravel().astype(np.int8) for g in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)))
    fa, fb = (torch.from_numpy((v.astype(np.float32) - z) * np.float32(s)) for v, s, z in ((a, sa, za), (b, sb, zb)))
    ref = np.round(exact_mul(fa, fb, sa, za, sb, zb, so, zo).numpy() / np.float32(so) + zo).astype(int)
    model = _add_model(*scales, op="Mul")
    plain = _session(model).run(None, {"a": a, "b": b})[0].astype(int)
    onnx_graph.integer_add_mul(model)
    onnx.checker.check_model(model)
    got = _session(model).run(None, {"a": a, "b": b})[0].astype(int)
    assert np.array_equal(got, ref)
    table = "Gather" in [n.op_type for n in model.graph.node]
    assert table == (not np.array_equal(plain, ref))  # a table exactly where QLinearMul disagrees


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


def test_a_float_value_is_quantized_as_xnnpack_and_fake_quant_do_on_a_division_tie():
    """The paper net's statistic: x / s rounds to exactly 198.5 in float32, x * (1/s) to 198.50002."""
    from onnx import TensorProto, helper, numpy_helper

    x = np.array([1073638484], np.uint32).view(np.float32)
    s = np.array([1008996272], np.uint32).view(np.float32)[0]
    assert x[0] / s == np.float32(198.5)  # the tie onnxruntime's division makes
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(s, np.float32), "s"), numpy_helper.from_array(np.array(-128, np.int8), "z")]
    nodes = [helper.make_node("Mul", ["x", "one"], ["y"], name="island"),  # a value computed in float
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["q"], name="q")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("q", TensorProto.INT8, [1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    fake_quant = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), float(s), -128, -128, 127)
    want = int(torch.round(fake_quant / float(s))[0]) - 128
    assert int(_session(model).run(None, {"x": x})[0][0]) == want - 1  # plain QuantizeLinear: 70
    onnx_graph.float_quantize_by_reciprocal(model)
    onnx.checker.check_model(model)
    assert int(_session(model).run(None, {"x": x})[0][0]) == want == 71
