"""The int32 conv bias: rounded in float64 like the TFLite converter; ONNX gets biases that round back."""

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from quantir.export.onnx_graph import snap_conv_biases
from quantir.quant.exact import bias_codes


def _disagreeing_bias(s_in: np.float32, s_w: np.ndarray) -> np.ndarray:
    """Per channel, a float32 bias near a .5 of its grid where float32 and float64 rounding differ."""
    out = []
    for s in s_w:
        s32, s64 = np.float32(s_in) * np.float32(s), np.float64(s_in) * np.float64(s)
        b = np.float32((7.5 + 3 * len(out)) * s64)
        for _ in range(400):
            if np.round(np.float32(b) / s32) != np.round(np.float64(b) / s64):
                break
            b = np.nextafter(b, np.float32(np.inf))
        out.append(b)
    return np.array(out, np.float32)


def test_bias_codes_round_in_float64_where_float32_would_not():
    s_in, s_w = np.float32(0.0962906), np.array([0.00123457, 0.0031, 0.000777, 0.00911], np.float32)
    b = _disagreeing_bias(s_in, s_w)
    f32 = np.round(b / (s_in * s_w))
    f64 = np.round(b.astype(np.float64) / (np.float64(s_in) * s_w.astype(np.float64)))
    assert (f32 != f64).any()  # the case exists: the float32 formula was wrong there
    got = bias_codes(torch.from_numpy(b), torch.tensor(s_in), torch.from_numpy(s_w)).numpy()
    assert np.array_equal(got, f64)


def test_onnx_biases_are_snapped_to_the_float64_codes():
    s_in, s_w = np.float32(0.0962906), np.array([0.00123457, 0.0031, 0.000777, 0.00911], np.float32)
    b = _disagreeing_bias(s_in, s_w)
    c = len(s_w)
    init = [numpy_helper.from_array(np.ones((c, 1, 1, 1), np.int8), "w"), numpy_helper.from_array(s_w, "sw"),
            numpy_helper.from_array(np.zeros(c, np.int8), "zw"), numpy_helper.from_array(s_in.reshape(()), "sa"),
            numpy_helper.from_array(np.int8(0).reshape(()), "za"), numpy_helper.from_array(b, "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sa", "za"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sa", "za"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 2, 2])], init)
    model = helper.make_model(graph)
    snap_conv_biases(model)
    snapped = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "b")
    want = np.round(b.astype(np.float64) / (np.float64(s_in) * s_w.astype(np.float64)))
    # onnxruntime quantizes the float bias in float32: it must land on the float64 codes
    assert np.array_equal(np.round(snapped / (s_in * s_w)), want)
    onnx.checker.check_model(model)
