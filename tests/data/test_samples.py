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
