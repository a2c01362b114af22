"""The run folder: nothing is written before the run is known to start, and a run stays resumable."""

from __future__ import annotations

from tests.train.conftest import tiny_config


def test_resume_without_a_run_is_an_error(cli, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    code, errors, _ = cli("train", tiny_config(tmp_path), "--out", out, "--resume", "--quiet")
    assert code == 3 and len(errors) == 1 and "no run to resume" in errors[0]
    assert list(out.iterdir()) == []


def test_failed_validation_leaves_folders_as_they_were(cli, tmp_path):
    cfg = tiny_config(tmp_path, **{"qat.enabled": False, "stage1.steps": 2, "stage2.enabled": False})
    run = tmp_path / "run"
    code, *_ = cli("train", cfg, "--out", run, "--quiet")
    assert code == 0
    saved = (run / "config.yaml").read_bytes()
    for bad in (["--set", "model=no_such_model"], ["--set", "data.train_dir=/nonexistent/photos"],
                ["--set", "teacher.enabled=true", "--set", "teacher.model=nope"]):
        code, errors, _ = cli("train", cfg, "--out", run, "--quiet", *bad)
        assert code == 2 and len(errors) == 1, (bad, errors)
        assert (run / "config.yaml").read_bytes() == saved, bad  # the old run can still be resumed
    code, errors, _ = cli("train", cfg, "--out", run, "--quiet", "--resume")
    assert code == 0 and not errors
    fresh = tmp_path / "fresh"
    code, errors, _ = cli("train", cfg, "--out", fresh, "--quiet", "--set", "model=no_such_model")
    assert code == 2 and not fresh.exists()


def test_run_folder_that_is_a_file(cli, tmp_path):
    target = tmp_path / "run"
    target.write_text("a file")
    code, errors, _ = cli("train", tiny_config(tmp_path), "--out", target, "--quiet")
    assert code == 2 and "not a folder" in errors[0] and target.read_text() == "a file"
