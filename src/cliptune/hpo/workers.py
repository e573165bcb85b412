"""Running trials: the trial loop, and worker processes that a driver watches and replaces.

With `--workers N` the driver starts N processes (spawn), each looping over trials on
the same storage with its own sampler seed; on a machine with G GPUs worker i trains
on GPU i mod G. When a worker dies (SIGKILL, the OOM killer), the driver fails its
running trial at once with the reason and starts a replacement for the trials it
still owed, so the study reaches the requested number of trials. Workers train on the
data the driver decided on (the resolved source, never `auto`) and prepared before they
started; one that loads other data, or meets another user error, prints it and exits
with code 2, and is not replaced (a replacement would stop the same way).
"""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import optuna
import torch
from optuna.trial import TrialState

from cliptune.errors import CliptuneError
from cliptune.hpo.definition import StudyDefinition, StudySettings, check_same_data
from cliptune.hpo.objective import Objective, scratch_dir
from cliptune.hpo.owners import OWNER_ATTR, fail_trial
from cliptune.hpo.results import make_artifact_store
from cliptune.hpo.study import TrialFailed, make_pruner, make_sampler, make_storage

# States that use up a shared --max-trials budget (a FAIL is retried or replaced).
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
POLL_INTERVAL_S = 1.0
WORKER_EXIT_GRACE_S = 60.0
MAX_RESTARTS = 3  # replacements per worker slot before the driver gives up on it
USER_ERROR_EXIT = 2  # a worker stopped on a user error it printed: not replaced


def budget_used(study: optuna.Study) -> int:
    """Trials counted against a shared --max-trials budget."""
    return len(study.get_trials(deepcopy=False, states=BUDGET_STATES))


def run_trials(study: optuna.Study, objective: Callable, trials: int | None,
               timeout: float | None = None, max_trials: int | None = None,
               callbacks: Sequence[Callable] = ()) -> int:
    """Run up to `trials` trials (None: no limit) until `timeout` seconds have passed or
    the study holds `max_trials` trials; returns how many this call ran.

    A trial that another driver declared dead (its heartbeat went stale, e.g. under
    a long stall) cannot be told its result any more; that is logged, not fatal.
    """
    start, done = time.monotonic(), 0
    while trials is None or done < trials:
        if timeout is not None and time.monotonic() - start >= timeout:
            break
        if max_trials is not None and budget_used(study) >= max_trials:
            break
        try:
            study.optimize(objective, n_trials=1, catch=(TrialFailed,),
                           callbacks=list(callbacks), gc_after_trial=True)
        except ValueError as err:
            if not str(err).startswith("Cannot tell a"):
                raise
            print(f"warning: a trial of this process was failed by another driver ({err})",
                  flush=True)
        done += 1
    return done


def worker_device(index: int, device: str, gpu_count: int) -> str:
    """Worker `index`'s device: GPU `index mod gpu_count` when the config leaves the
    choice to the machine (`auto`/`cuda`) and there are GPUs, else `device` as is."""
    if gpu_count < 1 or device not in ("auto", "cuda"):
        return device
    return f"cuda:{index % gpu_count}"


@dataclass
class WorkerJob:
    """What one worker process needs (picklable)."""

    settings: StudySettings
    definition: StudyDefinition  # its data decision made: the source resolved
    device: str  # the worker's device for the trial base's `train.device`
    index: int
    trials: int
    seed: int
    threads: int
    timeout: float | None = None
    startup_trials: int = 10  # the sampler's random start-up (`design.startup_trials`)


def worker_main(job: WorkerJob) -> None:
    """Entry point of a worker process."""
    try:
        _work(job)
    except KeyboardInterrupt:
        pass  # the driver writes the reports; the interrupted trial is already marked FAIL
    except CliptuneError as err:
        print(f"error: worker {job.index}: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


def _work(job: WorkerJob) -> None:
    torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s, definition = job.settings, job.definition
    definition.trial_base.train.device = job.device  # this process's copy
    storage = make_storage(s.storage, s.results_dir, s.study_name, s.heartbeat)
    study = optuna.load_study(study_name=s.study_name, storage=storage,
                              sampler=make_sampler(s.sampler, job.seed, job.startup_trials),
                              pruner=make_pruner(s.pruner, definition.budget, s.patience,
                                                 s.min_epochs))
    store = make_artifact_store(s.artifact_store, s.results_dir, s.study_name)
    objective = Objective(definition, s.study_name, store)
    check_same_data(objective.load_data(), definition.data, f"worker {job.index}")
    run_trials(study, objective, job.trials, job.timeout, s.max_trials)


def exit_reason(name: str, pid: int, exitcode: int) -> str:
    """Why a worker process ended, for a trial's fail_reason."""
    if exitcode == USER_ERROR_EXIT:
        return (f"worker {name} (pid {pid}) stopped on the error it printed above; not "
                "replaced, a replacement would stop the same way")
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode).name
        except ValueError:
            sig = f"signal {-exitcode}"
        hint = " (also what the out-of-memory killer sends)" if sig == "SIGKILL" else ""
        return f"worker {name} (pid {pid}) was killed by {sig}{hint}"
    return f"worker {name} (pid {pid}) exited with code {exitcode}"


def _owned_by(trial: optuna.trial.FrozenTrial, pid: int) -> bool:
    owner = trial.user_attrs.get(OWNER_ATTR) or {}
    return owner.get("pid") == pid


@dataclass
class Slot:
    """One worker position: its job and the processes that ran it."""

    job: WorkerJob
    process: multiprocessing.process.BaseProcess
    finished: int = 0  # trials run to an end by earlier processes of this slot
    restarts: int = 0
    handled: bool = False  # the current process's death was dealt with
    errors: list[str] = field(default_factory=list)


class WorkerPool:
    """Starts the workers, fails the trials of dead ones and replaces them."""

    def __init__(self, study: optuna.Study, storage, jobs: list[WorkerJob],
                 seed_for: Callable[[int, int], int]):
        self.study = study
        self.storage = storage
        self.seed_for = seed_for  # (index, restart) -> sampler seed
        self.context = multiprocessing.get_context("spawn")
        self.start_time = time.monotonic()
        self.slots = [Slot(job, self._start(job)) for job in jobs]
        self.messages: list[str] = []  # what happened to dead workers

    def _start(self, job: WorkerJob) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(target=worker_main, args=(job,),
                                       name=f"hpo-worker-{job.index}")
        process.start()
        return process

    def alive(self) -> bool:
        """Whether any worker still runs."""
        return any(slot.process.is_alive() for slot in self.slots)

    def check(self) -> None:
        """Handle workers that died since the last check."""
        for slot in self.slots:
            p = slot.process
            if p.is_alive() or p.exitcode in (0, None) or slot.handled:
                continue
            slot.handled = True
            reason = exit_reason(p.name, p.pid, p.exitcode)
            mine = [t for t in self.study.get_trials(deepcopy=False) if _owned_by(t, p.pid)]
            failed = [t.number for t in mine if t.state == TrialState.RUNNING
                      and fail_trial(self.study, self.storage, t, reason)]
            for number in failed:  # its half-written checkpoints
                shutil.rmtree(scratch_dir(slot.job.definition.trial_base.checkpoints_dir,
                                          slot.job.settings.study_name, number),
                              ignore_errors=True)
            slot.finished += sum(t.state in FINISHED for t in mine)
            remaining = slot.job.trials - slot.finished
            line = f"{reason}; trial(s) {failed or 'none'} marked failed"
            timeout = slot.job.settings.timeout
            left = None if timeout is None else timeout - (time.monotonic() - self.start_time)
            replace_it = p.exitcode != USER_ERROR_EXIT and slot.restarts < MAX_RESTARTS
            if remaining > 0 and replace_it and (left is None or left > 0):
                slot.restarts += 1
                slot.job = replace(slot.job, trials=remaining, timeout=left,
                                   seed=self.seed_for(slot.job.index, slot.restarts))
                slot.finished, slot.handled = 0, False
                slot.process = self._start(slot.job)
                line += f"; started a replacement for its {remaining} remaining trial(s)"
            elif p.exitcode == USER_ERROR_EXIT:
                slot.errors.append(line)
            elif remaining > 0:
                slot.errors.append(f"{line}; gave up after {slot.restarts} replacements")
            self.messages.append(line)
            print(f"warning: {line}", flush=True)

    def stop(self, grace_s: float = WORKER_EXIT_GRACE_S) -> list[str]:
        """Wait for the workers (terminate after `grace_s`); returns the errors."""
        deadline = time.monotonic() + grace_s
        for slot in self.slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join()
        return [e for slot in self.slots for e in slot.errors]


def run_workers(study: optuna.Study, storage, jobs: list[WorkerJob], poll: Callable[[], None],
                seed_for: Callable[[int, int], int]) -> tuple[bool, list[str], list[str]]:
    """Run `jobs` in worker processes, calling `poll` every second; returns
    (interrupted, errors, messages about replaced workers)."""
    pool = WorkerPool(study, storage, jobs, seed_for)
    interrupted = False
    try:
        while True:
            time.sleep(POLL_INTERVAL_S)
            pool.check()
            poll()
            if not pool.alive():
                pool.check()  # a worker that died just now gets its replacement
                if not pool.alive():
                    break
    except KeyboardInterrupt:
        interrupted = True  # the workers got the same SIGINT and stop after their trial
    errors = pool.stop()
    poll()
    return interrupted, ([] if interrupted else errors), pool.messages
