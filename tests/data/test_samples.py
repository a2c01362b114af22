import pytest

from quantir.data.samples import MANIFEST, fetch_samples


def test_manifest_sizes():
    assert len(MANIFEST["train"]) >= 30 and len(MANIFEST["eval"]) >= 15
    assert all(len(e["sha256"]) == 64 for s in MANIFEST.values() for e in s)


@pytest.mark.network
def test_fetch_samples_verified(samples_dir):
    train = sorted((samples_dir / "train").iterdir())
    evals = sorted((samples_dir / "eval").iterdir())
    assert len(train) >= 30 and len(evals) >= 15
    again = fetch_samples(samples_dir)  # second fetch comes from the verified cache
    assert len(again["eval"]) == len(evals)


def test_offline_fetch_fails_with_clear_message(tmp_path, monkeypatch):
    import subprocess

    from quantir.data import samples
    from quantir.errors import DataError

    monkeypatch.setenv("QUANTIR_CACHE", str(tmp_path / "cache"))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Failed to fetch: Temporary failure resolving 'deb.debian.org'")

    monkeypatch.setattr(samples, "_run", lambda cmd, cwd: offline(cmd))
    with pytest.raises(DataError, match="network access") as err:
        samples.fetch_samples(tmp_path / "out", ("eval",))
    assert "\n" not in str(err.value)
    assert not any((tmp_path / "out").rglob("*.png"))


def test_stress_sets_are_disjoint_from_every_other_set_and_from_each_other():
    """The hard photos are never trained, validated or calibrated on: no package the other sets use."""
    others = {e["package"] for name in ("train", "train-ext", "eval") for e in MANIFEST[name]}
    val, test = MANIFEST["stress-val"], MANIFEST["stress"]
    assert len(val) >= 8 and len(test) >= 15
    assert not {e["package"] for e in val + test} & others
    assert not {e["sha256"] for e in val} & {e["sha256"] for e in test}
    assert all(e.get("decode") == "box1020" for e in val + test)


def test_box_downscale_is_an_exact_integer_area_average():
    import io

    import numpy as np
    from PIL import Image

    from quantir.data.samples import _box_downscale

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (24, 30, 4), dtype=np.uint8)
    big[..., 3] = 255
    buf = io.BytesIO()
    Image.fromarray(big, "RGBA").save(buf, format="PNG")
    small = np.asarray(Image.open(io.BytesIO(_box_downscale(buf.getvalue(), long_side=10))))
    assert small.shape == (8, 10, 3)  # factor ceil(30 / 10) = 3
    blocks = big[..., :3].reshape(8, 3, 10, 3, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(small - blocks).max() < 1.0  # Pillow averages in fixed point: within one level
    assert abs(float((small - blocks).mean())) < 0.1
