"""Worker processes and drivers sharing a study: real SIGKILLs, GPU pinning, seeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hpo_tiny import kill_mid_trial, load, tiny_plan, wait_for, write_study_files
from optuna.trial import TrialState

from cliptune.cli import optimize
from cliptune.hpo import driver
from cliptune.hpo.definition import StudySettings
from cliptune.hpo.workers import worker_device

OPTIMIZE = Path(__file__).resolve().parent.parent / "src" / "optimize.py"


def start_driver(flags: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(OPTIMIZE), *flags], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def running_trial(root: Path, name: str, not_pid: int | None = None):
    """A RUNNING trial that has reported an epoch (mid-trial), owned by another pid."""
    try:
        trials = load(root, name).get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # the study is not created yet
        return None
    for trial in trials:
        owner = trial.user_attrs.get("owner")
        if owner and trial.intermediate_values and owner["pid"] != not_pid:
            return trial
    return None


def test_worker_device_is_gpu_i_mod_g():
    assert [worker_device(i, "auto", 2) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device(5, "cuda", 4) == "cuda:1"
    assert worker_device(1, "auto", 0) == "auto"  # no GPU: the trainer decides
    assert worker_device(1, "cpu", 2) == "cpu"  # an explicit device is kept


def test_workers_are_pinned_to_gpus_with_distinct_seeds(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(driver.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(driver.torch.cuda, "device_count", lambda: 2)  # a faked 2-GPU machine
    monkeypatch.setattr(driver.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    settings = StudySettings(study_name="g", trials=5, workers=3,
                             results_dir=str(tmp_path / "results"))
    # the machine chooses the device: what pinning workers is about
    plan = tiny_plan(tmp_path, cache_dir, max_train_seconds=60.0, **{"target.train.device": "auto"})
    opened = driver.open_for_trials(settings, plan)
    jobs = driver._jobs(settings, opened, lambda index, restart: 100 + index)
    assert [job.device for job in jobs] == ["cuda:0", "cuda:1", "cuda:0"]
    assert all(job.definition is opened.definition for job in jobs)
    assert opened.definition.max_train_seconds == 60.0
    assert [job.trials for job in jobs] == [2, 2, 1]
    assert len({job.seed for job in jobs}) == 3
    assert {job.startup_trials for job in jobs} == {4}  # after the baseline, 3 random draws
    assert opened.definition.trial_base.train.device == "auto"  # the shared base is untouched


def test_drivers_draw_distinct_sampler_seeds():
    assert driver.driver_salt(created=True) == 0  # the creator is reproducible
    joined = driver.driver_salt(created=False)
    assert joined != 0
    seeds = {driver.sampler_seed(0, 0, worker, salt) for worker in (0, 1) for salt in (0, joined)}
    assert len(seeds) == 4


def test_a_killed_worker_fails_its_trial_and_is_replaced(tmp_path, cache_dir):
    flags = write_study_files(tmp_path, cache_dir, trial_epochs=15, max_samples=32)
    proc = start_driver(flags + ["--study-name", "k", "--workers", "2", "--trials", "4",
                                 "--pruner", "none"], tmp_path)
    try:
        victim = kill_mid_trial(lambda: running_trial(tmp_path, "k", not_pid=proc.pid),
                                lambda: load(tmp_path, "k"))
        pid = victim.user_attrs["owner"]["pid"]
        output, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    study = load(tmp_path, "k")
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert f"(pid {pid}) was killed by SIGKILL" in killed.user_attrs["fail_reason"]
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and len(states) == 5  # the study got its 4
    assert "started a replacement" in output
    assert not (tmp_path / "checkpoints" / ".hpo-scratch" / "k" / f"trial_{victim.number:04d}"
                ).exists()  # its half-written checkpoints are gone
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_second_driver_leaves_the_first_drivers_trials_alone(tmp_path, cache_dir):
    flags = write_study_files(tmp_path, cache_dir, trial_epochs=8, max_samples=32)
    first = start_driver(flags + ["--study-name", "d", "--trials", "3", "--pruner", "none"],
                         tmp_path)
    try:
        busy = wait_for(lambda: running_trial(tmp_path, "d"), what="the first driver's trial")
        # the setup HPO_GUIDE recommends: another driver on the same journal study
        assert optimize.run(flags + ["--study-name", "d", "--trials", "1",
                                      "--pruner", "none"]) == 0
        assert load(tmp_path, "d").trials[busy.number].state != TrialState.FAIL
        output, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, output
    study = load(tmp_path, "d")
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    assert len({t.user_attrs["owner"]["pid"] for t in study.trials}) == 2
