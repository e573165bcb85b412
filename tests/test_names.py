"""A training run and a study never share a name: each refuses the other's folder, naming
both and the fix, and nothing the other wrote changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hpo_tiny import write_study_files
from test_main_cli import TINY_FLAGS

from cliptune.cli import optimize
from cliptune.cli import train as main
from cliptune.errors import ConfigError


def digest(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_study_refuses_the_name_of_a_training_run(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPTUNE_CACHE", str(cache_dir))
    flags = write_study_files(tmp_path, cache_dir)  # checkpoints under tmp_path/checkpoints
    run_flags = [*TINY_FLAGS, "--run-name", "shared", "--epochs", "1"]
    assert main.run(run_flags) == 0
    best = tmp_path / "checkpoints" / "shared" / "best.pt"
    before = digest(best)

    with pytest.raises(ConfigError) as info:
        optimize.run([*flags, "--study-name", "shared", "--trials", "1"])
    message = str(info.value)
    assert "study name 'shared' is taken by training run 'shared'" in message
    assert "--study-name NAME" in message
    assert digest(best) == before
    assert not (tmp_path / "results" / "shared").exists()  # no journal was created


def test_a_run_refuses_the_name_of_a_study(tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPTUNE_CACHE", str(cache_dir))
    flags = write_study_files(tmp_path, cache_dir)
    assert optimize.run([*flags, "--study-name", "shared", "--trials", "1"]) == 0
    folder = tmp_path / "checkpoints" / "shared"
    before = digest(folder / "best.pt"), (folder / "best.json").read_text()

    with pytest.raises(ConfigError) as info:
        main.run([*TINY_FLAGS, "--run-name", "shared", "--epochs", "1"])
    message = str(info.value)
    assert "run name 'shared' is taken by study 'shared'" in message
    assert "--run-name NAME" in message
    assert (digest(folder / "best.pt"), (folder / "best.json").read_text()) == before
    assert not (folder / "last.pt").exists()
    assert not list((tmp_path / "runs" / "shared").glob("events.out.tfevents.*"))

    # with resume off the run takes a free name, as for any folder in use
    assert main.run([*TINY_FLAGS, "--run-name", "shared", "--epochs", "1", "--no-resume"]) == 0
    assert (tmp_path / "checkpoints" / "shared-2" / "last.pt").is_file()
    assert (digest(folder / "best.pt"), (folder / "best.json").read_text()) == before
