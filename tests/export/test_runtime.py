import numpy as np
import pytest

from quantir.data.tiling import BandBuffer, TileCut
from quantir.export.runtime import _dequantize, load_runtime, quantize_input
from quantir.infer import builtin_model
from tests.conftest import natural_image


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


def test_lookup_takes_the_top_bit_flip_shortcut_only_for_that_table():
    from quantir.export.runtime import _lookup

    codes = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)[:, ::2]  # non-contiguous
    flip = (np.arange(256, dtype=np.uint8) ^ 0x80).view(np.int8)
    other = np.random.default_rng(1).integers(-128, 128, 256).astype(np.int8)
    identity = np.arange(256, dtype=np.uint8)
    for table in (flip, other, identity, np.linspace(0, 1, 256, dtype=np.float32)):
        got = _lookup(table, codes)
        assert got.dtype == table.dtype and np.array_equal(got, table[codes])
        band = np.zeros((5, 9, 3), table.dtype)  # into a strided view of a larger array, as tiles write bands
        assert _lookup(table, codes, out=band[:, 1:8:2]) is not None
        assert np.array_equal(band[:, 1:8:2], table[codes]) and not band[:, ::2].any()


@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_run_into_writes_the_core_and_returns_the_strips_of_run(backend):
    """A tile worker's ``run_into`` stores in the band what ``run`` gives on the tile's weight-one
    core, touches nothing else there, and returns ``run``'s strip pixels."""
    rt = load_runtime(builtin_model("sr", backend), threads=1)
    tile = natural_image(37, 45, seed=2)
    whole = rt.run(tile)
    band = BandBuffer(whole.shape[0], whole.shape[1] + 20)
    cut = TileCut(band, slice(4, 100), slice(6, 120), 10, np.array([0, 1, 110]), np.array([2, 130]))
    strip_rows, strip_cols = rt.run_into(tile, cut)
    assert np.array_equal(band.pixels[4:100, 16:130], whole[4:100, 6:120])
    assert np.array_equal(strip_rows, whole[[0, 1, 110]]) and np.array_equal(strip_cols, whole[:, [2, 130]])
