import numpy as np
import pytest

from quantir.export.runtime import _dequantize, load_runtime, quantize_input
from quantir.infer import builtin_model


@pytest.mark.parametrize("task", ["sr", "enhance"])
@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_lookup_tables_equal_the_float_formulas_on_every_value(task, backend):
    rt = load_runtime(builtin_model(task, backend), threads=1)
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1).repeat(3, axis=3)
    assert np.array_equal(rt.quantize(pixels),
                          quantize_input(pixels, rt.pixel_max, rt.in_dtype, rt.in_scale, rt.in_zp))
    out_dtype = np.int8 if rt.in_dtype == np.int8 else np.uint8
    levels = np.arange(np.iinfo(out_dtype).min, np.iinfo(out_dtype).max + 1).astype(out_dtype)
    y = levels.reshape(4, 64, 1)[:, ::-1].repeat(3, axis=2)  # a non-contiguous view, as tiles are
    assert np.array_equal(rt.dequantize(y), _dequantize(y, rt.pixel_max, rt.out_scale, rt.out_zp))
    float_out = np.linspace(-0.2, 1.2, 300, dtype=np.float32).reshape(1, 300, 1)
    assert np.array_equal(rt.dequantize(float_out), _dequantize(float_out, rt.pixel_max, rt.out_scale, rt.out_zp))
