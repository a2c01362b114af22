import numpy as np
import pytest
from PIL import Image

from quantir.data.datasets import enhance_pairs, folder_pairs, holdout_split, match_pairs, sr_pairs
from quantir.data.degrade import DegradationConfig, degrade
from quantir.data.patches import PatchDataset, Source, augment, gradient_energy
from quantir.data.resize import downscale
from quantir.errors import DataError
from tests.conftest import natural_image


def test_pairs_matched_by_name_not_order(tmp_path):
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir(), hr.mkdir()
    names = ["b", "a", "c"]
    for k, n in enumerate(names):
        img = natural_image(12, 12, seed=k)
        Image.fromarray(img).save(hr / f"{n}.png")
        Image.fromarray(downscale(img, 3)).save(lr / f"{n}x3.png")
    pairs = match_pairs(sorted(lr.iterdir(), reverse=True), sorted(hr.iterdir()), scale=3)
    assert [(i.stem, t.stem) for i, t in pairs] == [("ax3", "a"), ("bx3", "b"), ("cx3", "c")]
    seq = folder_pairs(lr, hr, scale=3)
    assert seq[0].input.shape == (4, 4, 3) and seq[0].target.shape == (12, 12, 3)
    (hr / "z.png").write_bytes((hr / "a.png").read_bytes())
    with pytest.raises(DataError, match="no input with the same name"):
        match_pairs(list(lr.iterdir()), list(hr.iterdir()), scale=3)


def test_sr_pairs_mod_crop_and_bicubic(photo_dir):
    pairs = sr_pairs(photo_dir, 3)
    assert len(pairs) == 6
    p = pairs[1]
    assert p.target.shape[0] % 3 == 0 and p.input.shape[0] * 3 == p.target.shape[0]


def test_enhance_pairs_deterministic_and_degraded(photo_dir):
    a, b = enhance_pairs(photo_dir, seed=3), enhance_pairs(photo_dir, seed=3)
    assert np.array_equal(a[0].input, b[0].input)
    assert not np.array_equal(a[0].input, a[0].target)
    assert not np.array_equal(enhance_pairs(photo_dir, seed=4)[0].input, a[0].input)


def test_degradation_changes_colour_and_is_seeded():
    img = natural_image(64, 64)
    cfg = DegradationConfig()
    x1 = degrade(img, np.random.default_rng(1), cfg)
    x2 = degrade(img, np.random.default_rng(1), cfg)
    assert np.array_equal(x1, x2) and x1.shape == img.shape
    assert np.abs(x1.astype(int) - img).mean() > 2


def test_holdout_split_disjoint():
    files = [__import__("pathlib").Path(f"f{i:02d}.jpg") for i in range(20)]
    train, val = holdout_split(files, 4)
    assert len(val) == 4 and not set(train) & set(val) and len(train) == 16


def test_patch_dataset_deterministic_augmented_and_rejects_flat():
    flat = np.full((60, 60, 3), 128, np.uint8)
    tex = natural_image(60, 60)
    srcs = [Source(target=flat, input=downscale(flat, 3)), Source(target=tex, input=downscale(tex, 3))]
    ds = PatchDataset(srcs, patch=8, scale=3, seed=5, flat_threshold=2.0)
    a, b = ds[7], ds[7]
    assert np.array_equal(a["input"].numpy(), b["input"].numpy())
    assert a["input"].shape == (3, 8, 8) and a["target"].shape == (3, 24, 24)
    energies = [gradient_energy(ds[i]["target"].permute(1, 2, 0).numpy()) for i in range(30)]
    assert min(energies) > 2.0  # flat crops were re-drawn
    x = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    assert augment([x], 4)[0].shape == (3, 2, 1)
