"""The study's design: TPE's start-up scaled to the trials (also under Hyperband's
brackets) and `--pruner auto` placing the first rung from a recorded fidelity check."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from hpo_tiny import tiny_plan

from cliptune.hpo.definition import StudySettings
from cliptune.hpo.design import first_rung, resolve_pruner, startup_trials
from cliptune.hpo.driver import open_for_trials, pruner_label
from cliptune.hpo.study import make_pruner, make_sampler, pruner_rungs


def test_startup_is_a_tenth_of_the_trials_after_the_enqueued():
    assert startup_trials(50) == 5  # the default study: 5 random draws (Optuna's default: 10)
    assert startup_trials(200) == 20
    assert startup_trials(10) == 3 and startup_trials(1) == 3  # at least 3
    assert startup_trials(50, enqueued=2) == 7  # the baseline and a warm start come first


def test_tpe_models_after_its_startup_in_every_hyperband_bracket(monkeypatch):
    """With the shipped budget (12 epochs, factor 5) Hyperband has two brackets; TPE still
    draws at random only for the study's first `startup_trials` finished trials: Optuna's
    TPE reads every bracket's trials, so the start-up is not paid once per bracket."""
    modelled: set[int] = set()
    sample = optuna.samplers.TPESampler._sample

    def spy(self, study, trial, search_space):
        modelled.add(trial.number)
        return sample(self, study, trial, search_space)

    monkeypatch.setattr(optuna.samplers.TPESampler, "_sample", spy)
    startup = startup_trials(50, enqueued=1)
    pruner = make_pruner("auto", 12)
    study = optuna.create_study(sampler=make_sampler("tpe", 0, startup), pruner=pruner,
                                study_name="design")
    study.enqueue_trial({"lr": 1e-3, "depth": 2})  # the baseline

    def objective(trial):
        lr, depth = trial.suggest_float("lr", 1e-4, 1e-2, log=True), trial.suggest_int("depth", 1, 4)
        for epoch in range(1, 13):
            trial.report(abs(math.log10(lr) + 3) + depth / 10 + 1 / epoch, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return abs(math.log10(lr) + 3) + depth / 10

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=16)
    brackets = {pruner._get_bracket_id(study, t) for t in study.trials[startup:]}
    assert pruner._n_brackets == 2 and brackets == {0, 1}
    assert modelled == set(range(startup, 16))  # trials 1-5 random, every later one TPE's


def write_check(results, study, rungs: dict[int, float], epochs=12, metric="val_loss"):
    agreement = {"final": {"spearman": 0.9}}
    agreement |= {f"epoch {epoch}": {"spearman": rho} for epoch, rho in rungs.items()}
    folder = results / study
    folder.mkdir(parents=True)
    (folder / "fidelity_check.json").write_text(json.dumps({
        "metric": metric, "reduced_fidelity": {"epochs": epochs}, "rungs": sorted(rungs),
        "agreement": agreement}))


def test_auto_moves_the_first_rung_to_the_earliest_trusted_one(tmp_path):
    settings = StudySettings(study_name="s", results_dir=str(tmp_path))
    resolved, note = resolve_pruner(settings, 12, "val_loss")  # no check yet: hyperband from epoch 1
    assert (resolved.pruner, resolved.min_epochs) == ("hyperband", 1)
    assert "no fidelity check" in note and pruner_rungs(resolved.pruner, 12) == [1, 5]
    write_check(tmp_path, "s", {1: 0.29, 5: 0.95})  # the CPU study's measured check
    resolved, note = resolve_pruner(settings, 12, "val_loss")
    assert (resolved.pruner, resolved.min_epochs) == ("hyperband", 5)
    assert "first rung at epoch 5" in note and "epoch 1: 0.29, epoch 5: 0.95" in note
    pruner = make_pruner(resolved.pruner, 12, min_epochs=resolved.min_epochs)
    assert pruner._min_resource == 5
    assert pruner_rungs(resolved.pruner, 12, resolved.min_epochs) == [5]  # one SHA bracket
    # another budget or metric than the check's: the check does not apply
    assert resolve_pruner(settings, 8, "val_loss")[0].min_epochs == 1
    assert resolve_pruner(settings, 12, "rsum")[0].min_epochs == 1
    # never earlier than --min-epochs; an explicit pruner is left alone
    assert first_rung({"metric": "val_loss", "reduced_fidelity": {"epochs": 30},
                       "agreement": {"epoch 1": {"spearman": 0.8},
                                     "epoch 5": {"spearman": 0.9}}}, 30, "val_loss", 2)[0] == 5
    explicit = StudySettings(study_name="s", results_dir=str(tmp_path), pruner="sha")
    assert resolve_pruner(explicit, 12, "val_loss") == (explicit, None)


@pytest.mark.parametrize("rhos", [{1: 0.29, 5: 0.5}, {1: float("nan")}])
def test_auto_prunes_nothing_where_no_rung_ranks_well(tmp_path, rhos):
    write_check(tmp_path, "s", rhos)
    resolved, note = resolve_pruner(StudySettings(study_name="s", results_dir=str(tmp_path)), 12,
                                  "val_loss")
    assert resolved.pruner == "none" and "no trial is pruned" in note


def test_a_study_opened_with_auto_judges_from_the_checked_rung(tmp_path, cache_dir):
    plan = tiny_plan(tmp_path, cache_dir, trial_epochs=4)
    results = tmp_path / "results"
    write_check(results, "s", {1: 0.2, 2: 0.8}, epochs=4)
    opened = open_for_trials(StudySettings(study_name="s", trials=0, results_dir=str(results),
                                           show_progress=False), plan)
    assert (opened.settings.pruner, opened.settings.min_epochs) == ("hyperband", 2)
    assert opened.study.pruner._min_resource == 2
    assert any(note.startswith("pruner auto: Hyperband, first rung at epoch 2: the fidelity "
                               "check ranks epoch 2") for note in opened.notes)
    assert pruner_label(opened.settings, opened.definition.budget) == "hyperband (rungs at epoch(s) 2)"
