"""optimize.py argument handling: defaults, base config assembly, user errors."""

from __future__ import annotations

import optuna
import pytest

import optimize
from cliptune.errors import ConfigError, DataError
from cliptune.hpo.objective import scratch_dir
from cliptune.hpo.study import make_storage


def test_defaults_run_the_shipped_experiment():
    args = optimize.parse_args([])
    config = optimize.build_base_config(args)
    settings = optimize.build_settings(args, config)
    assert (settings.trials, settings.study_name, settings.workers) == (50, "clip-hpo", 1)
    assert (settings.sampler, settings.pruner, settings.metric) == ("tpe", "hyperband", "val_loss")
    assert settings.storage is None and settings.epochs is None
    assert config.data.source == "auto"  # Flickr30k when available, else Shapes


def test_flags_reach_the_base_config_and_settings():
    args = optimize.parse_args([
        "--trials", "3", "--study-name", "s", "--workers", "2", "--timeout", "60",
        "--sampler", "random", "--pruner", "median", "--patience", "2", "--metric", "rsum",
        "--epochs", "4", "--max-samples", "500", "--seed", "7", "--data", "shapes",
        "--set", "train.batch_size=64", "--set", "model.vision_layers=2", "--retrain-best",
    ])
    config = optimize.build_base_config(args)
    settings = optimize.build_settings(args, config)
    assert (config.data.max_samples, config.seed, config.data.source) == (500, 7, "shapes")
    assert (config.train.batch_size, config.model.vision_layers) == (64, 2)
    assert (settings.trials, settings.study_name, settings.workers, settings.timeout) == (
        3, "s", 2, 60.0)
    assert (settings.sampler, settings.pruner, settings.patience, settings.metric) == (
        "random", "median", 2, "rsum")
    assert (settings.epochs, settings.seed, settings.retrain_best) == (4, 7, True)


def test_user_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        optimize.main(["--search-space", str(tmp_path / "nope.yaml"), "--trials", "0"])
    with pytest.raises(ConfigError, match="train.nope"):
        optimize.main(["--set", "train.nope=1", "--trials", "0"])
    with pytest.raises(ConfigError, match="--workers"):
        optimize.main(["--workers", "0", "--results-dir", str(tmp_path), "--trials", "0"])
    with pytest.raises(SystemExit):
        optimize.parse_args(["--pruner", "asha"])


def test_data_errors_stop_the_study_before_its_first_trial(tmp_path):
    results = tmp_path / "results"
    with pytest.raises(DataError):
        optimize.main(["--data", "folder", "--data-dir", str(tmp_path / "missing"),
                       "--results-dir", str(results), "--study-name", "d", "--trials", "2",
                       "--quiet"])
    study = optuna.load_study(study_name="d", storage=make_storage(None, results, "d"))
    assert study.trials == []


def test_continuing_fails_trials_a_killed_driver_left_running(tmp_path):
    results, checkpoints = tmp_path / "results", tmp_path / "checkpoints"
    argv = ["--results-dir", str(results), "--study-name", "k", "--trials", "0", "--quiet",
            "--set", f"checkpoints_dir={checkpoints}"]
    assert optimize.main(argv) == 0
    study = optuna.load_study(study_name="k", storage=make_storage(None, results, "k"))
    orphan = study.ask()  # what a killed driver leaves behind
    scratch = scratch_dir(str(checkpoints), "k", orphan.number)
    scratch.mkdir(parents=True)
    (scratch / "last.pt").write_bytes(b"half")
    assert optimize.main(argv) == 0
    trial = optuna.load_study(study_name="k", storage=make_storage(None, results, "k")).trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("left RUNNING by a driver that stopped")
    assert not scratch.exists()
