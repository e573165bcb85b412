"""Studies on a REAL PostgreSQL server (see conftest.py): drivers racing to create the
storage, two drivers sharing a study, a SIGKILLed driver's trial failed by the heartbeat
and retried."""

from __future__ import annotations

import multiprocessing

import optuna
import pandas as pd
import pytest
from hpo_tiny import kill_mid_trial, load, write_study_files
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from pg_race import open_together
from test_hpo_workers import start_driver

from cliptune.hpo.study import make_storage

# retried_trial_number is an experimental (stable since 2.8) Optuna API
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def test_drivers_opening_a_fresh_database_together_all_succeed(postgres_url):
    context = multiprocessing.get_context("spawn")
    n = 4
    barrier, results = context.Barrier(n), context.Queue()
    processes = [context.Process(target=open_together, args=(postgres_url, barrier, results))
                 for _ in range(n)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    assert [kind for kind, _ in outcomes] == ["ok"] * n, outcomes
    assert sorted(created for _, created in outcomes) == [False] * (n - 1) + [True]


def test_rdb_storage_has_heartbeat_retry_and_pre_ping(postgres_url):
    storage = make_storage(postgres_url, "", "s")
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.engine_kwargs["pool_pre_ping"] is True
    assert storage.get_heartbeat_interval() == 60
    assert isinstance(storage.get_heartbeat_stale_trial_callback(),
                      RetryHeartbeatStaleTrialCallback)


def test_two_drivers_share_a_study_and_a_killed_ones_trial_is_retried(
        tmp_path, tmp_path_factory, postgres_url):
    flags = write_study_files(tmp_path, tmp_path_factory.mktemp("cache"), trial_epochs=6,
                              max_samples=32)
    flags += ["--study-name", "pg", "--storage", postgres_url, "--heartbeat", "2",
              "--pruner", "none"]
    # started at the same moment on a fresh database
    # enough trials that the survivor still starts one after the victim's heartbeat is
    # stale (3 beats of 2 s), on an idle or a loaded machine alike
    survivor = start_driver(flags + ["--trials", "16"], tmp_path)
    victim_driver = start_driver(flags + ["--trials", "16"], tmp_path)
    try:
        victim = kill_mid_trial(lambda: _running_of(tmp_path, postgres_url, victim_driver.pid),
                                lambda: load(tmp_path, "pg", postgres_url))
        victim_driver.wait(60)
        output, _ = survivor.communicate(timeout=600)
    finally:
        survivor.kill()
        victim_driver.kill()
    assert survivor.returncode == 0, output
    study = load(tmp_path, "pg", postgres_url)
    trials = study.trials
    assert trials[victim.number].state == TrialState.FAIL  # its heartbeat went stale
    retries = [t for t in trials
               if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[victim.number].params
    by_victim = [t for t in trials if t.user_attrs.get("owner", {}).get("pid") == victim_driver.pid]
    finished_by_victim = sum(t.state == TrialState.COMPLETE for t in by_victim)
    # the survivor ran its 16 (the retry among them); the victim its finished ones + 1 failed
    assert len(trials) == 16 + finished_by_victim + 1
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    frame = pd.read_csv(tmp_path / "results" / "pg" / "trials.csv")  # the reports cover all
    assert sorted(frame.number) == [t.number for t in trials]


def _running_of(root, url, pid):
    """A RUNNING trial of process `pid` that has reported an epoch."""
    try:
        trials = load(root, "pg", url).get_trials(states=(TrialState.RUNNING,))
    except KeyError:
        return None
    return next((t for t in trials if t.intermediate_values
                 and t.user_attrs.get("owner", {}).get("pid") == pid), None)
