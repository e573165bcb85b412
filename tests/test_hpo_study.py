"""Sampler, pruner and storage setup; continuing studies; orphaned trials; shared journals."""

from __future__ import annotations

import importlib.util
import multiprocessing

import optuna
import pytest
from optuna.trial import TrialState

from cliptune.errors import ConfigError
from cliptune.hpo.study import (
    fail_orphaned_trials,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
)


def test_tpe_is_seeded_multivariate_with_constant_liar():
    sampler = make_sampler("tpe", seed=3)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._multivariate is True and sampler._constant_liar is True
    draws = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler("tpe", seed=3))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        draws.append([t.params["x"] for t in study.trials])
    assert draws[0] == draws[1]
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)


def test_gp_sampler_or_a_clear_missing_scipy_error():
    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(ConfigError, match="pip install scipy"):
            make_sampler("gp", 0)
    else:
        assert isinstance(make_sampler("gp", 0), optuna.samplers.GPSampler)


def test_unknown_sampler_and_pruner_are_config_errors():
    with pytest.raises(ConfigError, match="--sampler"):
        make_sampler("cmaes", 0)
    with pytest.raises(ConfigError, match="--pruner"):
        make_pruner("asha", 5)
    with pytest.raises(ConfigError, match="--patience"):
        make_pruner("none", 5, patience=-1)


def test_pruner_choices():
    hyperband = make_pruner("hyperband", epochs=9)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert hyperband._max_resource == 9 and hyperband._min_resource == 1
    assert isinstance(make_pruner("median", 5), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("sha", 5), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none", 5), optuna.pruners.NopPruner)
    patient = make_pruner("none", 5, patience=2)
    assert isinstance(patient, optuna.pruners.PatientPruner) and patient._patience == 2


def test_patience_prunes_a_trial_that_stopped_improving():
    study = optuna.create_study(pruner=make_pruner("none", 10, patience=1))
    trial = study.ask()
    for step, value in enumerate([1.0, 0.5, 0.6, 0.7], start=1):
        trial.report(value, step)
    assert trial.should_prune()


def test_default_storage_is_a_journal_under_the_results_dir(tmp_path):
    storage = make_storage(None, tmp_path / "results", "s1")
    assert isinstance(storage, optuna.storages.JournalStorage)
    assert (tmp_path / "results" / "s1" / "study.journal").is_file()
    sqlite = make_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, "s1")
    assert isinstance(sqlite, optuna.storages.RDBStorage)
    with pytest.raises(ConfigError, match="--storage"):
        make_storage("nosuchdb://host/db", tmp_path, "s1")


def test_study_is_continued_and_its_metric_is_kept(tmp_path):
    def study(metric="val_loss"):
        storage = make_storage(None, tmp_path, "s")
        return open_study(storage, "s", metric, make_sampler("random", 0), make_pruner("none", 3))

    first = study()
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again = study()
    assert len(again.trials) == 2 and again.direction == optuna.study.StudyDirection.MINIMIZE
    with pytest.raises(ConfigError, match="optimizes val_loss, not rsum"):
        study("rsum")


def test_orphaned_running_trials_are_failed_with_a_reason(tmp_path):
    storage = make_storage(None, tmp_path, "s")
    study = open_study(storage, "s", "val_loss", make_sampler("random", 0), make_pruner("none", 3))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    orphan = study.ask()  # a worker that died mid-trial leaves it RUNNING
    assert fail_orphaned_trials(study, "worker died") == [orphan.number]
    frozen = study.trials[orphan.number]
    assert frozen.state == TrialState.FAIL
    assert frozen.user_attrs["fail_reason"] == "worker died"
    assert study.trials[0].state == TrialState.COMPLETE


def _journal_worker(path: str, seed: int, queue) -> None:
    storage = make_storage(path, "", "shared")
    study = optuna.load_study(study_name="shared", storage=storage,
                              sampler=make_sampler("tpe", seed))
    errors = []
    try:
        study.optimize(lambda t: (t.suggest_float("x", -1, 1)) ** 2, n_trials=15)
    except Exception as err:  # the test wants to see any lock error, not hide it
        errors.append(repr(err))
    queue.put(errors)


def test_two_processes_share_one_journal_without_errors(tmp_path):
    path = str(tmp_path / "shared.journal")
    optuna.create_study(study_name="shared", storage=make_storage(path, "", "shared"))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_journal_worker, args=(path, seed, queue))
               for seed in (0, 1)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert results == [[], []]
    study = optuna.load_study(study_name="shared", storage=make_storage(path, "", "shared"))
    assert len(study.trials) == 30
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.number for t in study.trials}) == 30
