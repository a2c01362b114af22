"""Loading networks from outside quantir: factories, state_dicts, and what one forward pass tells."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from quantir.data.task import Task
from quantir.errors import ConfigError, ModelFileError
from quantir.models import external


class Up(nn.Module):
    def __init__(self, lo=0.0, hi=1.0):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return F.interpolate(torch.clamp(x, self.lo, self.hi), scale_factor=3, mode="bicubic")


def test_detect_scale_task_and_pixel_range():
    info = external.detect_info(Up(0.0, 1.0))
    assert (info.task, info.scale, info.pixel_max) == (Task.SR, 3, 1.0)
    assert external.detect_info(Up(10.0, 255.0)).pixel_max == 255.0
    assert external.detect_info(nn.Identity()).task is Task.ENHANCE
    assert external.detect_info(Up(), pixel_max=255.0).pixel_max == 255.0
    with pytest.raises(ConfigError, match="upscales x3"):
        external.detect_info(Up(), scale=2)


def test_state_dict_wrappers_and_prefixes_are_unwrapped(tmp_path):
    net = nn.Conv2d(3, 3, 3)
    torch.save({"params_ema": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth")
    other = external.load_weights(nn.Conv2d(3, 3, 3), tmp_path / "w.pth")
    assert torch.equal(other.weight, net.weight)
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    assert torch.equal(external.load_state_dict(tmp_path / "w.safetensors")["bias"], net.bias)


def test_pickles_with_code_are_refused(tmp_path):
    torch.save({"net": nn.Conv2d(3, 3, 3)}, tmp_path / "module.pt")  # a whole module: unpickling would run code
    with pytest.raises(ModelFileError, match="not a readable weights file"):
        external.load_state_dict(tmp_path / "module.pt")


def test_factory_specs(tmp_path):
    assert external.is_factory_spec("nets/my_net.py:build") and external.is_factory_spec("pkg.mod:Net")
    assert not external.is_factory_spec("C:\\weights.pth") and not external.is_factory_spec("model.pth")
    (tmp_path / "net.py").write_text("import torch.nn as nn\ndef build():\n    return nn.Conv2d(3, 3, 1)\n")
    assert isinstance(external.load_factory(f"{tmp_path}/net.py:build"), nn.Conv2d)
    with pytest.raises(ModelFileError, match="not a function or class"):
        external.load_factory(f"{tmp_path}/net.py:missing")


def test_spandrel_files(tmp_path):
    pytest.importorskip("spandrel", reason="spandrel is not installed (it needs a torchvision matching this torch "
                                           "build; the CPU wheel here has none): pip install 'quantir[spandrel]'")
    net = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.PReLU(48), nn.Conv2d(48, 48, 3, padding=1),
                        nn.PReLU(48), nn.Conv2d(48, 12, 3, padding=1), nn.PixelShuffle(2))
    torch.save({"params": {f"body.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "compact.pth")
    model, info = external.load_spandrel(tmp_path / "compact.pth")
    assert info.scale == 2 and info.pixel_max == 1.0
