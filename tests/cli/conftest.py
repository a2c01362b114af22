import pytest
import torch

from quantir.export.api import ExportOptions, export_artifacts
from quantir.models import create_model, reparameterize_model
from quantir.quant.api import calibrate, prepare_ptq
from quantir.quant.config import QuantConfig


def _artifact(name, kw, out):
    torch.manual_seed(0)
    model = reparameterize_model(create_model(name, **kw))
    pm = model.info.pixel_max
    q = prepare_ptq(model, torch.rand(2, 3, 32, 32) * pm, QuantConfig())
    calibrate(q, (torch.rand(1, 3, 32, 32) * pm for _ in range(2)))
    export_artifacts(q, model, out, ExportOptions())
    return out


@pytest.fixture(scope="session")
def sr_model(tmp_path_factory):
    return _artifact("mobileone_sr_tiny", {}, tmp_path_factory.mktemp("sr_model")) / "model_int8.tflite"


@pytest.fixture(scope="session")
def enhance_model(tmp_path_factory):
    return _artifact("qatie_unet_int8", {"channels": 4}, tmp_path_factory.mktemp("enh_model")) / "model_int8.tflite"
