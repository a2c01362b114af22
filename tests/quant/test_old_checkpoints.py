"""QAT checkpoints written by older code (and the built-in models' own) rebuild to the same fake-quant model, bit
for bit.

A checkpoint stores the quantizers by their number in the exported graph, so an innocent reorder
of a model's forward() renumbers them (it happened once to compose_stem's output sum). The files
in data/ were written by the revision in their name (make_old_checkpoint.py says how).
"""

from pathlib import Path

import numpy as np
import pytest

from quantir.models.apply import run_uint8
from quantir.quant import checkpoint
from tests.conftest import natural_image

DATA = Path(__file__).parent / "data"
INPUT_SIZE, INPUT_SEED = (14, 18), 3


@pytest.mark.parametrize("path", sorted(DATA.glob("*_qat_*.safetensors")), ids=lambda p: p.stem)
def test_old_qat_checkpoint_rebuilds_bit_for_bit(path):
    expected = np.load(path.with_name(f"{path.stem}_output.npy"))
    model = checkpoint.build(checkpoint.load(path), what=str(path))
    assert np.array_equal(run_uint8(model, natural_image(*INPUT_SIZE, seed=INPUT_SEED)), expected)


@pytest.mark.parametrize("name", ["sr_x3", "enhance"])
def test_builtin_qat_checkpoint_still_gives_its_shipped_tflite(name):
    """The built-in models ship their QAT checkpoint next to the TFLite it was exported from: today's
    quantizer must rebuild the same fake-quant model, 0 LSB from the shipped artifact."""
    import quantir
    from quantir.export.runtime import load_runtime

    folder = Path(quantir.__file__).parent / "assets" / name
    model = checkpoint.build(checkpoint.load(folder / "qat_final.safetensors"))
    img = natural_image(24, 32, seed=5)
    assert np.array_equal(run_uint8(model, img), load_runtime(folder / "model_int8.tflite").run(img))
