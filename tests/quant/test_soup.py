"""A soup of QAT checkpoints: the mean of their floating state, scales that follow it, 0 LSB on export."""

import copy

import pytest
import torch

from quantir.data.resize import downscale
from quantir.errors import ModelFileError
from quantir.export.api import export_artifacts
from quantir.models import create_model, reparameterize_model
from quantir.quant import checkpoint
from quantir.quant.api import convert, refresh_weight_qparams
from quantir.quant.config import QuantConfig
from quantir.quant.soup import average_records, soup
from tests.conftest import natural_image, short_sr_qat


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two QAT checkpoints of one FP32 model: the second's floating state moved as another seed would."""
    q, model = short_sr_qat(lambda: reparameterize_model(create_model("mobileone_sr_tiny")).eval(), QuantConfig())
    first = checkpoint.qat_record(q, (16, 16), model)
    second = copy.deepcopy(first)
    gen = torch.Generator().manual_seed(1)
    for k, _ in q.named_parameters():  # what training moves; zero points stay in int8 range, as trained ones do
        v = second["state_dict"][k]
        if k.endswith("zero_point"):
            second["state_dict"][k] = (v + 2 * torch.randn(v.shape, generator=gen)).clamp(-128, 127)
        elif not k.endswith("gamma"):
            second["state_dict"][k] = v * (1 + 0.05 * torch.randn(v.shape, generator=gen))
    folder = tmp_path_factory.mktemp("soup")
    paths = [folder / "a.safetensors", folder / "b.safetensors"]
    for record, path in zip((first, second), paths):
        checkpoint.save(record, path)
    return paths, first, second


def test_soup_is_the_mean_with_weight_scales_from_the_mean(runs):
    paths, first, second = runs
    qmodel, record = soup(paths)
    params = dict(qmodel.named_parameters())
    for k, v in params.items():
        assert torch.allclose(v, (first["state_dict"][k] + second["state_dict"][k]) / 2, atol=1e-6), k
    again = checkpoint.build_qat(record)  # saved scales are the ones the averaged weights give
    x = torch.rand(1, 3, 16, 16) * 255
    before = again.state_dict()
    refresh_weight_qparams(again, x)
    after = again.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "scale" in k)
    with torch.no_grad():
        assert torch.equal(again(x), qmodel(x))
    assert record["soup_of"] == [str(p) for p in paths]


def test_soup_exports_at_zero_lsb(runs, tmp_path):
    qmodel, record = soup(runs[0])
    fp32 = checkpoint.build_float(record["float"])
    images = [downscale(natural_image(60, 72, seed=k), 3) for k in (3, 4)]
    res = export_artifacts(convert(qmodel), fp32, tmp_path, parity_images=images, reference=qmodel)
    for backend in ("tflite", "onnx"):
        assert res["parity"].backends[backend].max_lsb == 0


def test_soup_refuses_runs_of_another_fp32_model_or_graph(runs):
    _, first, second = runs
    other = copy.deepcopy(second)
    key = next(iter(other["float"]["state_dict"]))
    other["float"]["state_dict"][key] = other["float"]["state_dict"][key] + 1
    with pytest.raises(ModelFileError, match="another FP32 model"):
        average_records([first, other], ["a", "b"])
    with pytest.raises(ModelFileError, match="example_hw differs"):
        average_records([first, dict(second, example_hw=[24, 24])], ["a", "b"])
    other_rule = copy.deepcopy(second)
    other_rule["quant_config"]["act_bits"] = 4
    with pytest.raises(ModelFileError, match="another rule"):
        average_records([first, other_rule], ["a", "b"])
    rounding = copy.deepcopy(second)
    rounding["quant_config"]["weight_rounding"] = "sum_preserving"
    assert average_records([first, rounding])["quant_config"] == first["quant_config"]  # the first run's rule
    with pytest.raises(ModelFileError, match="at least two"):
        average_records([first])
    with pytest.raises(ModelFileError, match="no FP32 reference"):
        average_records([first, {k: v for k, v in second.items() if k != "float"}], ["a", "b"])
