"""Sampler, pruner and storage setup; continuing studies; orphaned trials; shared journals."""

from __future__ import annotations

import importlib.util
import multiprocessing
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from cliptune.errors import ConfigError
from cliptune.hpo.owners import fail_dead_owners, owner_alive, owner_record
from cliptune.hpo.study import database_url, make_pruner, make_sampler, make_storage, open_study


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


def test_min_epochs_moves_the_first_rung():
    study = optuna.create_study(pruner=make_pruner("sha", 12, min_epochs=5))
    for _ in range(4):  # four good trials set the rung at epoch 5
        trial = study.ask()
        for step in range(1, 13):
            trial.report(1.0 / step, step)
            assert not trial.should_prune()  # SHA records each trial's rungs as it asks
        study.tell(trial, 1.0 / 12)
    bad = study.ask()
    for step in range(1, 5):  # far worse, but not judged before epoch 5
        bad.report(10.0, step)
        assert not bad.should_prune()
    bad.report(10.0, 5)
    assert bad.should_prune()
    with pytest.raises(ConfigError, match="--min-epochs must be at least 1 and below the "
                                          r"trial budget \(--epochs 12\), got 12"):
        make_pruner("hyperband", 12, min_epochs=12)
    with pytest.raises(ConfigError, match="--min-epochs"):
        make_pruner("median", 12, min_epochs=0)
    assert isinstance(make_pruner("none", 12, min_epochs=12), optuna.pruners.NopPruner)


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

    first, created = study()
    assert created and first.metric_names == ["val_loss"]  # what optuna-dashboard shows
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    again, created = study()
    assert not created
    assert len(again.trials) == 2 and again.direction == optuna.study.StudyDirection.MINIMIZE
    with pytest.raises(ConfigError, match="optimizes val_loss, not rsum"):
        study("rsum")


def test_only_trials_of_dead_owners_are_failed(tmp_path):
    storage = make_storage(None, tmp_path, "s")
    study, _ = open_study(storage, "s", "val_loss", make_sampler("random", 0),
                          make_pruner("none", 3))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    live = study.ask()  # this process runs it
    live.set_user_attr("owner", owner_record())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = study.ask()  # a worker that died mid-trial leaves it RUNNING
    dead.set_user_attr("owner", owner_record(gone.pid))
    gone.wait()
    remote = study.ask()  # another machine, beating recently
    remote.set_user_attr("owner", {"host": "elsewhere", "pid": 1, "started": 1})
    remote.set_user_attr("beat", time.time())
    silent = study.ask()  # another machine, silent for longer than the grace period
    silent.set_user_attr("owner", {"host": "elsewhere", "pid": 2, "started": 1})
    silent.set_user_attr("beat", time.time() - 600)
    assert fail_dead_owners(study, storage, "worker died", grace_s=120) == [
        dead.number, silent.number]
    states = {t.number: t.state for t in study.trials}
    assert states[live.number] == states[remote.number] == TrialState.RUNNING
    assert states[dead.number] == states[silent.number] == TrialState.FAIL
    assert study.trials[dead.number].user_attrs["fail_reason"] == "worker died"
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_reused_pid_is_not_mistaken_for_the_owner():
    me = owner_record()
    assert owner_alive(_running_with_owner(me))
    assert not owner_alive(_running_with_owner({**me, "started": me["started"] + 1}))


def _running_with_owner(owner: dict) -> optuna.trial.FrozenTrial:
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("owner", owner)
    return study.trials[0]


def test_plain_postgresql_urls_use_the_installed_psycopg_3_driver():
    assert database_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


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
