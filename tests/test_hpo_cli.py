"""optimize.py argument handling: defaults, base config assembly, user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hpo_tiny import load, write_study_files

from cliptune.cli import optimize
from cliptune.config import load_config
from cliptune.errors import ConfigError, DataError
from cliptune.hpo import driver
from cliptune.hpo.objective import scratch_dir
from cliptune.hpo.owners import owner_record
from cliptune.hpo.search_space import base_params, load_search_space
from cliptune.hpo.study import make_storage

REPO = Path(__file__).resolve().parent.parent


def test_defaults_tune_the_default_experiment_at_reduced_fidelity():
    args = optimize.parse_args([])
    plan = optimize.build_plan(args)
    settings = optimize.build_settings(args)
    assert (settings.trials, settings.study_name, settings.workers) == (50, "clip-hpo", 1)
    assert (settings.sampler, settings.pruner, plan.metric) == ("tpe", "auto", "val_loss")
    assert settings.warm_start == () and settings.warm_start_top == 1
    assert settings.storage is None and settings.max_trials is None and settings.seeds == 3
    assert plan.target == load_config(REPO / "experiments" / "default.yaml")
    trial = plan.trial_base
    assert (trial.train.epochs, trial.data.max_samples, trial.data.max_eval_samples) == (
        12, 2000, 300)
    assert trial.train.figure_images == 0 and trial.data.source == "auto"
    # the target's own values are in the shipped space: the baseline trial exists
    params, reason = base_params(load_search_space(args.search_space), plan.target)
    assert reason == "" and params["lr"] == plan.target.train.lr


def test_flags_reach_the_base_config_and_settings():
    args = optimize.parse_args([
        "--trials", "3", "--study-name", "s", "--workers", "2", "--timeout", "60",
        "--sampler", "random", "--pruner", "median", "--patience", "2", "--metric", "rsum",
        "--epochs", "4", "--max-samples", "500", "--max-eval-samples", "100", "--seed", "7",
        "--data", "shapes", "--set", "train.batch_size=64", "--set", "model.vision_layers=2",
        "--retrain-best", "--seeds", "2", "--max-trials", "9", "--heartbeat", "5",
        "--allow-changes", "--min-epochs", "2", "--warm-start", "cpu, gpu@db.journal",
        "--warm-start-top", "2",
    ])
    plan = optimize.build_plan(args)
    settings = optimize.build_settings(args)
    config, trial = plan.target, plan.trial_base
    assert (config.data.max_samples, config.seed, config.data.source) == (None, 0, "shapes")
    assert settings.seed == 7  # the sampler's: the trials train with the target's seed
    assert (config.train.batch_size, config.model.vision_layers) == (64, 2)
    assert (trial.data.max_samples, trial.data.max_eval_samples, trial.train.epochs) == (
        500, 100, 4)
    assert (settings.trials, settings.study_name, settings.workers, settings.timeout) == (
        3, "s", 2, 60.0)
    assert (settings.sampler, settings.pruner, settings.patience, plan.metric) == (
        "random", "median", 2, "rsum")
    assert settings.min_epochs == 2 and optimize.build_settings(
        optimize.parse_args([])).min_epochs == 1
    assert (settings.retrain_best, settings.seeds, settings.max_trials) == (True, 2, 9)
    assert (settings.heartbeat.interval_s, settings.heartbeat.grace_s) == (5, 15)
    assert settings.allow_changes
    assert (settings.warm_start, settings.warm_start_top) == (("cpu", "gpu@db.journal"), 2)
    assert settings.given == {"metric", "target.data.source", "target.train.batch_size",
                              "target.model.vision_layers", "fidelity.epochs",
                              "fidelity.max_samples", "fidelity.max_eval_samples"}
    assert optimize.build_settings(optimize.parse_args([])).given == frozenset()


def test_user_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        optimize.run(["--search-space", str(tmp_path / "nope.yaml"), "--trials", "0"])
    with pytest.raises(ConfigError, match="train.nope"):
        optimize.run(["--set", "train.nope=1", "--trials", "0"])
    with pytest.raises(ConfigError, match="--workers"):
        optimize.run(["--workers", "0", "--results-dir", str(tmp_path), "--trials", "0"])
    with pytest.raises(SystemExit):
        optimize.parse_args(["--pruner", "asha"])
    with pytest.raises(ConfigError, match="--seeds"):
        optimize.run(["--seeds", "0", "--results-dir", str(tmp_path), "--trials", "0"])
    for mode in (["--trials", "0"], ["--check-fidelity", "3"]):  # refused before any work
        with pytest.raises(ConfigError, match=r"--min-epochs .*\(--epochs 12\), got 12"):
            optimize.run(["--min-epochs", "12", "--results-dir", str(tmp_path), *mode])
    assert not (tmp_path / "clip-hpo" / "fidelity_check").exists()  # nothing was trained
    study_file = tmp_path / "study.yaml"
    study_file.write_text("target: ../nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml"):
        optimize.run(["--study-config", str(study_file), "--trials", "0"])
    study_file.write_text("target: x.yaml\nfidelity: {epoch: 3}\n")
    with pytest.raises(ConfigError, match="study.yaml: unknown fidelity key.*epoch"):
        optimize.run(["--study-config", str(study_file), "--trials", "0"])


def test_data_errors_stop_the_study_before_it_is_created(tmp_path):
    results = tmp_path / "results"
    with pytest.raises(DataError, match="data folder not found: .*missing"):
        optimize.run(["--data", "folder", "--data-dir", str(tmp_path / "missing"),
                       "--results-dir", str(results), "--study-name", "d", "--trials", "2",
                       "--quiet"])
    assert not (results / "d").exists()  # no journal, no study


def test_a_refused_command_leaves_the_journal_byte_identical(tmp_path):
    results = tmp_path / "results"
    argv = ["--results-dir", str(results), "--study-name", "j", "--quiet",
            "--set", f"checkpoints_dir={tmp_path / 'checkpoints'}"]
    assert optimize.run([*argv, "--trials", "0"]) == 0
    journal = results / "j" / "study.journal"
    before = journal.read_bytes()
    with pytest.raises(ConfigError, match="--allow-changes"):
        optimize.run([*argv, "--trials", "0", "--epochs", "3"])
    with pytest.raises(ConfigError, match="--metric"):
        optimize.run([*argv, "--trials", "0", "--metric", "rsum"])
    assert journal.read_bytes() == before


def test_continuing_fails_trials_a_killed_driver_left_running(tmp_path):
    results, checkpoints = tmp_path / "results", tmp_path / "checkpoints"
    argv = ["--results-dir", str(results), "--study-name", "k", "--trials", "0", "--quiet",
            "--set", f"checkpoints_dir={checkpoints}"]
    assert optimize.run(argv) == 0
    study = optuna.load_study(study_name="k", storage=make_storage(None, results, "k"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = owner_record(dead.pid)  # recorded while it ran ...
    dead.wait()  # ... and now it is gone, as after a SIGKILL
    orphan = study.ask()  # what a killed driver leaves behind (the baseline trial)
    orphan.set_user_attr("owner", owner)
    scratch = scratch_dir(str(checkpoints), "k", orphan.number)
    scratch.mkdir(parents=True)
    (scratch / "last.pt").write_bytes(b"half")
    assert optimize.run(argv) == 0
    trial = optuna.load_study(study_name="k", storage=make_storage(None, results, "k")).trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("its owner process died")
    assert not scratch.exists()


def test_a_study_keeps_one_trial_budget(tmp_path, monkeypatch):
    """Created with 4 epochs per trial, continued with --allow-changes --epochs 2: refused
    (journal untouched); continued with another allowed change, the pruner, the trials and
    the report all run on the recorded 4 epochs."""
    budgets, make_pruner = [], driver.make_pruner

    def spy(name, epochs, *args, **kwargs):
        budgets.append(epochs)
        return make_pruner(name, epochs, *args, **kwargs)

    monkeypatch.setattr(driver, "make_pruner", spy)
    flags = write_study_files(tmp_path, tmp_path / "cache", trial_epochs=4, target_epochs=4)
    argv = [*flags, "--study-name", "b", "--pruner", "median", "--trials", "1"]
    assert optimize.run(argv) == 0
    journal = tmp_path / "results" / "b" / "study.journal"
    before = journal.read_bytes()
    with pytest.raises(ConfigError, match=r"runs its trials for 4 epochs.*--epochs"):
        optimize.run([*argv, "--allow-changes", "--epochs", "2"])
    assert journal.read_bytes() == before
    budgets.clear()
    assert optimize.run([*argv, "--allow-changes", "--max-samples", "24"]) == 0
    trials = load(tmp_path, "b").trials
    assert len(trials) == 2 and trials[1].user_attrs["config"]["data"]["max_samples"] == 24
    assert [t.user_attrs["config"]["train"]["epochs"] for t in trials] == [4, 4]
    assert len(trials[1].intermediate_values) == 4  # median: no pruning before 5 trials
    assert set(budgets) == {4}
    report = (tmp_path / "results" / "b" / "report.md").read_text()
    assert "4 epochs per trial; sampler tpe, pruner median (rungs at epoch(s) 1, 2, 3)" in report
    assert "fidelity: max_samples: 32 -> 24" in report
