"""Device placement: the logic is tested on the CPU (mocked CUDA, the meta device); the GPU tests
run where a GPU exists and skip cleanly elsewhere."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from quantir.errors import ConfigError
from quantir.train.device import autocast, process_group_backend, resolve_device, to_device

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA"):
        resolve_device("cuda")


def test_auto_picks_this_ranks_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="only 2 GPU"):
        resolve_device("cuda:5")


def test_backend_follows_the_tensors_not_the_machine():
    assert process_group_backend(torch.device("cpu")) == "gloo"
    assert process_group_backend(torch.device("cuda", 0)) == "nccl"


def test_bad_device_names_fail_in_the_config():
    from quantir.config import from_dict
    from quantir.train.config import TrainConfig

    with pytest.raises(ConfigError, match="device 'gpu0'"):
        from_dict(TrainConfig, {"device": "gpu0"})


def test_cpu_path_has_no_autocast_and_no_copies():
    batch = {"input": torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "name": "x"}
    assert to_device(batch, torch.device("cpu")) is batch
    with autocast(torch.device("cpu"), enabled=True):
        assert not torch.is_autocast_enabled("cpu")


def test_every_parameter_and_batch_lands_on_the_run_device(tmp_path, monkeypatch):
    """The stage's loss moves the batch to the context's device; ``meta`` stands in for a GPU."""
    import quantir.train.stages as stages
    from quantir.config import from_dict
    from quantir.models import create_model
    from quantir.train.config import StageConfig, TrainConfig
    from quantir.train.distributed import DistContext
    from quantir.train.stages import Context, float_stage

    meta = torch.device("meta")
    cfg = from_dict(TrainConfig, {"model": "mobileone_sr_tiny", "device": "meta"})
    ctx = Context(cfg, tmp_path, DistContext(device=meta), sources=[], val=[], pixel_max=255.0)
    model = create_model("mobileone_sr_tiny").to(meta)
    spec = float_stage(ctx, "stage1", model, StageConfig(steps=1), salt=1)
    seen = {}

    def record(loss_cfg, pred, target, teacher):  # meta tensors have no values to log
        seen.update(pred=pred.device, target=target.device)
        return pred.sum(), {}

    monkeypatch.setattr(stages, "reconstruction_loss", record)
    batch = {"input": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "target": torch.zeros(2, 3, 24, 24, dtype=torch.uint8)}
    loss, _ = spec.compute_loss(model, batch)
    assert loss.device == meta and seen == {"pred": meta, "target": meta}
    assert all(p.device == meta for p in model.parameters())
    assert all(p.device == meta for g in spec.param_groups for p in g["params"])


@needs_gpu
@pytest.mark.parametrize("name", ["mobileone_sr", "abpn", "qatie_unet_int8"])
def test_fake_quant_is_identical_on_gpu_and_cpu(name):
    """QAT stays exact on a GPU: the fake-quant forward gives the CPU's outputs bit for bit."""
    from tests.export.test_artifacts import _qat_model

    qmodel, _ = _qat_model(name)
    x = torch.rand(2, 3, 40, 48) * qmodel.info.pixel_max
    with torch.no_grad():
        cpu = qmodel.eval()(x)
        gpu = qmodel.to("cuda")(x.to("cuda")).cpu()
    assert torch.equal(cpu, gpu)


@needs_gpu
def test_tiny_training_on_cuda_exports_on_cpu(tmp_path):
    from quantir.cli import main
    from quantir.quant import checkpoint
    from tests.train.conftest import tiny_config

    # A GPU image may lack the TFLite converter (scripts/gpu_check.sh cannot carry its 70 MB wheel):
    # then the run exports ONNX alone, and its parity is the check.
    formats = [f for f, module in (("tflite", "litert_torch"), ("onnx", "onnxscript"))
               if importlib.util.find_spec(module) is not None]
    assert formats, "neither exporter is installed"
    cfg = tiny_config(tmp_path, **{"export.enabled": True, "export.parity_limit": 1, "export.formats": formats})
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--device", "cuda", "--quiet"]) == 0
    record = checkpoint.load(out / "checkpoints" / "qat_final.safetensors")
    assert all(t.device.type == "cpu" for t in record["state_dict"].values())
    parity = json.loads((out / "export" / "parity.json").read_text())
    assert {f: parity[f]["max_lsb"] for f in formats} == {f: 0 for f in formats}
