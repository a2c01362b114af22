import pytest
import yaml
from PIL import Image

from tests.conftest import natural_image


def tiny_config(tmp_path, task="sr", **overrides):
    """A seconds-long config over synthetic photos (no network)."""
    train, ev, stress = tmp_path / "train", tmp_path / "eval", tmp_path / "stress"
    for d, n, seed in ((train, 6, 0), (ev, 2, 100), (stress, 1, 200)):
        d.mkdir(exist_ok=True)
        for k in range(n):
            Image.fromarray(natural_image(96, 120, seed=seed + k)).save(d / f"im{k}.png")
    cfg = {
        "task": task, "scale": 3,
        "model": "mobileone_sr_tiny" if task == "sr" else "qatie_unet_int8",
        "model_options": {} if task == "sr" else {"channels": 4},
        "data": {"train_dir": str(train), "eval_dir": str(ev), "stress_dir": str(stress), "val_holdout": 2, "hr_downscale": 1,
                 "patch": 16 if task == "sr" else 32, "batch": 4, "val_size": 48},
        "stage1": {"steps": 30, "val_every": 10, "ckpt_every": 10},
        "stage2": {"steps": 10, "val_every": 5, "ckpt_every": 5},
        "qat": {"calib_batches": 2, "train": {"steps": 10, "val_every": 5, "ckpt_every": 5}},
        "bn_recal_batches": 2,
        "export": {"enabled": False},
    }
    if task == "enhance":
        cfg["stage1"]["loss"] = {"l1": 0.0, "psnr_y": 2.0, "cosine": 1.0, "outlier": 1.0}
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def make_config(tmp_path):
    return lambda **kw: tiny_config(tmp_path, **kw)
