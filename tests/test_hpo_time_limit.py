"""Run time per trial, the target's projected training time, and the time limit."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from hpo_tiny import SPACE, load, read_json, synthetic_definition, tiny_plan, write_study_files

from cliptune.cli import optimize
from cliptune.config import RunConfig, apply_overrides, config_to_dict
from cliptune.errors import ConfigError
from cliptune.hpo.definition import StudySettings, adopt_recorded, load_plan, study_fingerprint
from cliptune.hpo.driver import run_study
from cliptune.hpo.report.files import ReportContext, StudyReporter
from cliptune.hpo.results import beats, best_trial
from cliptune.hpo.search_space import describe, search_space_from_dict
from cliptune.hpo.time_limit import CONSTRAINT, measured_epochs, project_train_seconds
from cliptune.model.flops import training_flops_per_sample


def run_tiny(tmp_path, cache_dir, name: str, limit: float | None) -> optuna.Study:
    plan = tiny_plan(tmp_path, cache_dir, trial_epochs=1, target_epochs=2, max_samples=32,
                     max_train_seconds=limit)
    settings = StudySettings(study_name=name, trials=2, sampler="random", pruner="none",
                             results_dir=str(tmp_path / "results"), show_progress=False,
                             plot_interval_s=1e9)
    run_study(settings, plan)
    return load(tmp_path, name)


def test_projection_scales_training_by_images_and_validation_by_its_own():
    metrics = {"train_time": 2.0, "epoch_time": 3.0}  # 1 s of validation
    # the target: 3x the training images, 2x the validation images, 10 epochs
    assert project_train_seconds(metrics, (100, 50), (300, 100), 10) == pytest.approx(80.0)


def test_projection_counts_unmasked_epochs_at_their_own_cost():
    """Patch dropout: a trial's first epoch is masked, the target's last epochs are not."""
    assert measured_epochs(RunConfig(), RunConfig()) == 10  # no patch dropout: epochs
    full = apply_overrides(RunConfig(), ["model.patch_dropout=0.5", "train.epochs=10",
                                         "train.unmasked_epochs=2"])
    masked = training_flops_per_sample(full.model)
    unmasked = training_flops_per_sample(full.model, masked=False)
    assert unmasked > 1.3 * masked
    assert measured_epochs(full, full) == pytest.approx(8 + 2 * unmasked / masked)
    trial = apply_overrides(RunConfig(), ["model.patch_dropout=0.5", "train.epochs=2",
                                          "train.unmasked_epochs=2"])  # trained unmasked
    assert measured_epochs(full, trial) == pytest.approx(8 * masked / unmasked + 2)
    metrics = {"train_time": 2.0, "epoch_time": 3.0}
    assert project_train_seconds(metrics, (100, 50), (300, 100), 10, train_epochs=9.5) == \
        pytest.approx(9.5 * 6 + 10 * 2)


def test_trials_record_run_time_and_a_limit_all_keep_to(tmp_path, cache_dir):
    study = run_tiny(tmp_path, cache_dir, "fast", limit=1e6)
    for trial in study.trials:
        attrs = trial.user_attrs
        assert attrs["run_seconds"] > 0 and attrs["epoch_seconds"] > 0
        assert attrs["run_seconds"] >= attrs["epoch_seconds"]  # one epoch, plus the setup
        # the target trains 2 epochs on 48 images (the trial: 1 epoch on 32), validates on
        # the same 16: between 2x and 3x the trial's one epoch
        epoch = attrs["epoch_seconds"]
        assert 2 * epoch <= attrs["projected_train_seconds"] <= 3 * epoch
        assert trial.constraints[CONSTRAINT] == pytest.approx(
            attrs["projected_train_seconds"] - 1e6)
    out = tmp_path / "results" / "fast"
    frame = pd.read_csv(out / "trials.csv")
    assert (frame["run_seconds"] > 0).all() and (frame["epoch_seconds"] > 0).all()
    assert frame["feasible"].tolist() == [True, True]
    report = (out / "report.md").read_text()
    assert "must train in at most **1e+06 s** at full fidelity" in report
    assert "2 of 2 complete trials keep to it" in report
    assert "| run s | s / epoch | target train s |" in report
    assert "No complete trial keeps to the time limit" not in report
    best = read_json(out / "best_results.json")
    assert best["feasible"] is True and best["run_seconds"] > 0
    assert study.user_attrs["fingerprint"]["limits"] == {"max_train_seconds": 1e6}


def test_a_limit_no_trial_keeps_to_is_said_and_the_best_is_still_chosen(tmp_path, cache_dir):
    study = run_tiny(tmp_path, cache_dir, "slow", limit=1e-3)
    assert all(t.constraints[CONSTRAINT] > 0 for t in study.trials)
    out = tmp_path / "results" / "slow"
    best = read_json(out / "best_results.json")
    assert best["feasible"] is False
    assert best["value"] == min(t.value for t in study.trials)
    report = (out / "report.md").read_text()
    assert "0 of 2 complete trials keep to it" in report
    assert "**No complete trial keeps to the time limit.**" in report
    assert "(over the limit)" in report
    assert (out / "best_config.yaml").is_file()


def test_without_a_limit_the_projection_is_recorded_but_no_constraint(tmp_path, cache_dir):
    study = run_tiny(tmp_path, cache_dir, "free", limit=None)
    assert all(t.user_attrs["projected_train_seconds"] > 0 for t in study.trials)
    assert all(t.constraints == {} for t in study.trials)
    report = (tmp_path / "results" / "free" / "report.md").read_text()
    assert "Time limit" not in report and "target train s" in report
    assert "feasible" not in pd.read_csv(tmp_path / "results" / "free" / "trials.csv")


def test_the_best_trial_is_the_feasible_one_over_a_better_slower_one(tmp_path):
    study = optuna.create_study(direction="minimize")
    config = config_to_dict(RunConfig(name="t"))
    for value, over in ((1.0, 50.0), (1.5, -10.0), (2.0, -20.0)):  # the best is 50 s too slow
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.set_user_attr("config", config)
        trial.set_user_attr("projected_train_seconds", 300 + over)
        trial.set_constraint(CONSTRAINT, over)
        study.tell(trial, value)
    assert best_trial(study).number == 1
    assert not beats(False, 0.5, best_trial(study), "val_loss")  # better, but too slow
    assert beats(True, 1.4, best_trial(study), "val_loss")
    assert not beats(True, 1.6, best_trial(study), "val_loss")
    ctx = ReportContext(synthetic_definition(tmp_path, 1, max_train_seconds=300.0), "c",
                        tmp_path / "c")
    StudyReporter(ctx).write(study, plots=False)
    assert json.loads((ctx.out_dir / "best_results.json").read_text())["trial"] == 1
    report = (ctx.out_dir / "report.md").read_text()
    assert "Trial **1**" in report and "2 of 3 complete trials keep to it" in report
    rows = [line for line in report.splitlines() if line.startswith("| 0 ")]
    assert rows and "(over the limit)" in rows[0]
    # TPE samples the next trial from a constrained study (feasible and infeasible groups)
    study.sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=1)
    assert 1e-4 <= study.ask().suggest_float("lr", 1e-4, 1e-2, log=True) <= 1e-2


def test_joining_with_another_limit_is_refused_naming_the_key(tmp_path, cache_dir):
    flags = write_study_files(tmp_path, cache_dir)
    assert optimize.run(flags + ["--study-name", "l", "--trials", "1", "--pruner", "none",
                                  "--max-train-seconds", "1000"]) == 0
    assert load(tmp_path, "l").trials[0].constraints[CONSTRAINT] < 0
    with pytest.raises(ConfigError, match=r"limits: max_train_seconds: 1000.0 -> 500.0"):
        optimize.run(flags + ["--study-name", "l", "--trials", "0", "--max-train-seconds", "500"])
    assert optimize.run(flags + ["--study-name", "l", "--trials", "0",
                                  "--max-train-seconds", "1000"]) == 0
    # a driver without the study file takes the study's limit (the shipped file sets none)
    join = ["--study-name", "l", "--trials", "0", "--results-dir", str(tmp_path / "results"),
            "--quiet", "--cache-dir", str(cache_dir)]
    assert optimize.run(join) == 0
    report = (tmp_path / "results" / "l" / "report.md").read_text()
    assert "limits.max_train_seconds None -> 1000.0" in report
    assert "must train in at most **1000 s**" in report


def test_a_study_from_before_limits_keeps_none_unless_the_command_sets_one(tmp_path, cache_dir):
    # a limit as from a study file's default, not from the command
    plan = tiny_plan(tmp_path, cache_dir, max_train_seconds=300.0)
    recorded = study_fingerprint("val_loss", describe(plan.space), plan.target,
                                 plan.fidelity.record())
    assert "limits" not in recorded
    kept, adopted = adopt_recorded(plan, recorded, None, frozenset())
    assert kept.max_train_seconds is None and adopted == ["limits.max_train_seconds 300.0 -> None"]
    given = frozenset({"limits.max_train_seconds"})
    kept, adopted = adopt_recorded(plan, recorded, None, given)
    assert kept.max_train_seconds == 300.0 and adopted == []


def test_a_wrong_limit_names_the_flag_or_the_key(tmp_path, cache_dir):
    flags = write_study_files(tmp_path, cache_dir)
    with pytest.raises(ConfigError, match="--max-train-seconds must be >= 0"):
        optimize.run(flags + ["--trials", "0", "--max-train-seconds", "-5"])
    study_file = tmp_path / "study.yaml"
    study_file.write_text(study_file.read_text() + "max_train_seconds: fast\n")
    with pytest.raises(ConfigError, match=r"study.yaml: max_train_seconds: expected positive"):
        load_plan(study_file, space=search_space_from_dict(SPACE))
