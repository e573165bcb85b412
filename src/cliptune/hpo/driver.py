"""Run a study: open it, run trials in one or several processes, keep the reports current.

The driver process owns the console, the reports and the best checkpoint. With
`workers=1` it runs the trials itself; with more it starts that many processes
(spawn), each running `study.optimize` on the same storage with its own sampler
seed, and watches the storage for finished trials.
"""

from __future__ import annotations

import copy
import multiprocessing
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from cliptune.config import RunConfig, validate
from cliptune.errors import ConfigError
from cliptune.hpo.best_checkpoint import settle_trial_checkpoint, study_checkpoint_dir
from cliptune.hpo.objective import CALLBACK_KEYS, Objective, ObjectiveSettings, scratch_dir
from cliptune.hpo.progress import StudyProgress
from cliptune.hpo.reports import (
    PLOT_INTERVAL_S,
    ReportContext,
    StudyReporter,
    StudySummary,
    best_trial,
    summarize,
)
from cliptune.hpo.retrain import retrain_best
from cliptune.hpo.search_space import SearchSpace, describe
from cliptune.hpo.study import (
    METRICS,
    TrialFailed,
    default_journal_path,
    fail_orphaned_trials,
    has_heartbeat,
    is_rdb_url,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
)
from cliptune.runtime import check_precision, resolve_device

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
POLL_INTERVAL_S = 1.0
WORKER_EXIT_GRACE_S = 60.0


@dataclass
class StudySettings:
    """Everything `optimize.py` decides about a study (defaults: the CLI's)."""

    study_name: str = "clip-hpo"
    trials: int = 50  # trials this run adds to the study
    storage: str | None = None  # None: optuna-results/<study>/study.journal
    workers: int = 1
    timeout: float | None = None  # seconds, per worker
    sampler: str = "tpe"
    pruner: str = "hyperband"
    patience: int | None = None
    metric: str = "val_loss"
    epochs: int | None = None  # per-trial budget; None: the study's, else the base config's
    seed: int = 0
    results_dir: str = "optuna-results"
    retrain_best: bool = False
    show_progress: bool = True
    plot_interval_s: float = PLOT_INTERVAL_S


@dataclass
class StudyOutcome:
    """What a call to `run_study` did."""

    study_name: str
    out_dir: Path
    summary: StudySummary
    best_value: float | None
    best_trial: int | None
    interrupted: bool = False
    worker_errors: list[str] = field(default_factory=list)
    retrain: dict | None = None


def storage_label(settings: StudySettings) -> str:
    """The storage as a user may see it: a journal path, or a URL without its password."""
    if settings.storage is None:
        return str(default_journal_path(settings.results_dir, settings.study_name))
    if is_rdb_url(settings.storage):
        return make_url(settings.storage).render_as_string(hide_password=True)
    return settings.storage


def _existing_study(storage, study_name: str) -> tuple[dict | None, int]:
    """User attributes and trial count of the study, or (None, 0) if it does not exist."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no study of that name yet
        return None, 0
    return study.user_attrs, len(study.get_trials(deepcopy=False))


def resolve_budget(settings: StudySettings, recorded: dict | None, base: RunConfig) -> int:
    """Per-trial epochs: the continued study's, else --epochs, else the base config's.

    Trials of one study share the budget (the pruner compares them epoch by epoch), so
    adding trials with another --epochs is an error. Without new trials (`--trials 0
    --retrain-best --epochs N`) --epochs only sets the retraining length.
    """
    if settings.epochs is not None and settings.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {settings.epochs}")
    previous = (recorded or {}).get("epochs")
    if previous is None:
        return settings.epochs or base.train.epochs
    if settings.epochs not in (None, previous) and settings.trials > 0:
        raise ConfigError(
            f"--epochs {settings.epochs}: study {settings.study_name!r} runs {previous} epochs "
            f"per trial; continue it with --epochs {previous} or start a new --study-name"
        )
    return previous


def _check_settings(settings: StudySettings) -> None:
    if settings.trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {settings.trials}")
    if settings.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {settings.workers}")
    if settings.timeout is not None and settings.timeout <= 0:
        raise ConfigError(f"--timeout must be positive seconds, got {settings.timeout}")
    if settings.metric not in METRICS:
        raise ConfigError(f"--metric {settings.metric!r}: choose one of {', '.join(METRICS)}")


def sampler_seed(seed: int, existing_trials: int, worker: int) -> int:
    """A continued study gets fresh random draws; each worker its own stream."""
    return seed + 1000 * existing_trials + worker


class TrialMonitor:
    """Reacts to finished trials: best checkpoint, console line, reports."""

    def __init__(self, reporter: StudyReporter, progress: StudyProgress, checkpoint_folder: Path,
                 minimize: bool, already_finished: set[int]):
        self.reporter = reporter
        self.progress = progress
        self.checkpoint_folder = checkpoint_folder
        self.minimize = minimize
        self.seen = set(already_finished)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback signature (single-process runs)."""
        if trial.number in self.seen:
            return
        self.seen.add(trial.number)
        settle_trial_checkpoint(trial, self.checkpoint_folder, self.minimize)
        self.progress.trial_finished(study, trial)
        self.reporter.write(study)

    def poll(self, study: optuna.Study) -> None:
        """Handle trials that worker processes finished since the last poll."""
        for trial in study.get_trials(deepcopy=False, states=FINISHED):
            self(study, trial)


@dataclass
class WorkerJob:
    """What one worker process needs (picklable)."""

    settings: StudySettings
    base: RunConfig
    space: SearchSpace
    budget: int
    index: int
    trials: int
    seed: int
    threads: int


def _optimize(study: optuna.Study, objective: Objective, trials: int | None,
              timeout: float | None, callbacks=()) -> None:
    study.optimize(objective, n_trials=trials, timeout=timeout, catch=(TrialFailed,),
                   callbacks=list(callbacks), gc_after_trial=True)


def _worker_main(job: WorkerJob) -> None:
    """Entry point of a worker process."""
    torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = job.settings
    storage = make_storage(s.storage, s.results_dir, s.study_name)
    study = optuna.load_study(
        study_name=s.study_name, storage=storage,
        sampler=make_sampler(s.sampler, job.seed),
        pruner=make_pruner(s.pruner, job.budget, s.patience),
    )
    objective = Objective(job.space, job.base, ObjectiveSettings(s.study_name, s.metric, job.budget))
    try:
        objective.load_data()
        _optimize(study, objective, job.trials, s.timeout)
    except KeyboardInterrupt:
        pass  # the driver writes the reports; the interrupted trial is already marked FAIL


def split_trials(trials: int, workers: int) -> list[int]:
    """`trials` spread over `workers` as evenly as possible (exact total)."""
    return [trials // workers + (i < trials % workers) for i in range(workers)]


def _run_workers(study: optuna.Study, jobs: list[WorkerJob], monitor: TrialMonitor) -> tuple[bool, list[str]]:
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_main, args=(job,), name=f"hpo-worker-{job.index}")
                 for job in jobs]
    for process in processes:
        process.start()
    interrupted = False
    try:
        while any(p.is_alive() for p in processes):
            time.sleep(POLL_INTERVAL_S)
            monitor.poll(study)
    except KeyboardInterrupt:
        interrupted = True  # the workers got the same SIGINT and stop after their trial
    deadline = time.monotonic() + WORKER_EXIT_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.terminate()
            process.join()
    monitor.poll(study)
    errors = [f"{p.name} exited with code {p.exitcode}" for p in processes
              if p.exitcode not in (0, None) and not interrupted]
    return interrupted, errors


def prepare_base(base: RunConfig, space: SearchSpace, budget: int, metric: str) -> RunConfig:
    """The config every trial starts from: the budget and objective set, checked against
    the space and the machine (device, precision)."""
    base = copy.deepcopy(base)
    base.train.epochs = budget
    base.train.best_metric = CALLBACK_KEYS[metric]
    validate(base)
    check_precision(base.train.precision, resolve_device(base.train.device))
    space.check_against(base)
    return base


@dataclass
class OpenedStudy:
    """A study ready for trials: the Optuna study and what its trials share."""

    study: optuna.Study
    base: RunConfig  # the config every trial starts from
    budget: int  # epochs per trial
    existing: int  # trials it had before this run
    continued: bool


def open_for_trials(settings: StudySettings, base: RunConfig, space: SearchSpace) -> OpenedStudy:
    """Create or load the study, settle its budget, fail orphaned trials, record attributes."""
    _check_settings(settings)
    storage = make_storage(settings.storage, settings.results_dir, settings.study_name)
    recorded, existing = _existing_study(storage, settings.study_name)
    budget = resolve_budget(settings, recorded, base)
    base = prepare_base(base, space, budget, settings.metric)
    study = open_study(storage, settings.study_name, settings.metric,
                       make_sampler(settings.sampler, sampler_seed(settings.seed, existing, 0)),
                       make_pruner(settings.pruner, budget, settings.patience))
    if recorded is not None and not has_heartbeat(storage):
        orphans = fail_orphaned_trials(
            study, "left RUNNING by a driver that stopped; failed when the study was continued"
        )
        for number in orphans:  # their half-written checkpoints
            shutil.rmtree(scratch_dir(base.checkpoints_dir, settings.study_name, number),
                          ignore_errors=True)
        if orphans and settings.show_progress:
            print(f"marked {len(orphans)} orphaned RUNNING trial(s) as failed: {orphans}")
    if recorded is None:
        study.set_user_attr("epochs", budget)
        study.set_user_attr("runs_dir", base.runs_dir)
        study.set_user_attr("checkpoints_dir", base.checkpoints_dir)
    study.set_user_attr("search_space", describe(space))
    return OpenedStudy(study, base, budget, existing, recorded is not None)


def report_context(settings: StudySettings, opened: OpenedStudy, space: SearchSpace) -> ReportContext:
    """What the reports of this study need to know."""
    pruner = settings.pruner
    if settings.patience is not None:
        pruner += f" (patience {settings.patience})"
    return ReportContext(
        study_name=settings.study_name,
        out_dir=Path(settings.results_dir) / settings.study_name,
        metric=settings.metric, budget=opened.budget, runs_dir=opened.base.runs_dir,
        checkpoints_dir=opened.base.checkpoints_dir, storage_label=storage_label(settings),
        search_space=describe(space), settings={"sampler": settings.sampler, "pruner": pruner},
    )


def _run_trials(settings: StudySettings, opened: OpenedStudy, space: SearchSpace,
                monitor: TrialMonitor, objective: Objective | None) -> tuple[bool, list[str]]:
    """Run the trials with `objective` in this process, or in worker processes when it is
    None; returns (interrupted, worker errors)."""
    if objective is not None:
        try:
            _optimize(opened.study, objective, settings.trials, settings.timeout, [monitor])
        except KeyboardInterrupt:
            return True, []
        return False, []
    threads = max(1, torch.get_num_threads() // settings.workers)
    jobs = [
        WorkerJob(settings, opened.base, space, opened.budget, index, n,
                  sampler_seed(settings.seed, opened.existing, index), threads)
        for index, n in enumerate(split_trials(settings.trials, settings.workers)) if n
    ]
    return _run_workers(opened.study, jobs, monitor)


def run_study(settings: StudySettings, base: RunConfig, space: SearchSpace) -> StudyOutcome:
    """Create or continue the study, run `settings.trials` trials, write the reports.

    Ctrl-C stops after the running trial(s); the reports then cover what finished.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    opened = open_for_trials(settings, base, space)
    study, budget = opened.study, opened.budget
    if settings.show_progress:
        state = f"continued, {opened.existing} trials so far" if opened.continued else "new"
        print(f"study {settings.study_name!r} ({state}): {settings.trials} trials of up to "
              f"{budget} epochs, {settings.metric} ({METRICS[settings.metric]}), sampler "
              f"{settings.sampler}, pruner {settings.pruner}, {settings.workers} worker(s); "
              f"storage {storage_label(settings)}", flush=True)
    objective = None
    if settings.trials > 0 and settings.workers == 1:  # load the data before the first trial
        objective = Objective(space, opened.base,
                              ObjectiveSettings(settings.study_name, settings.metric, budget))
        objective.load_data(quiet=not settings.show_progress)
    ctx = report_context(settings, opened, space)
    reporter = StudyReporter(ctx, settings.plot_interval_s)
    progress = StudyProgress(settings.trials or None, settings.metric, budget,
                             settings.show_progress)
    monitor = TrialMonitor(
        reporter, progress, study_checkpoint_dir(opened.base.checkpoints_dir, settings.study_name),
        METRICS[settings.metric] == "minimize",
        {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)},
    )
    interrupted, errors = False, []
    if settings.trials > 0:
        interrupted, errors = _run_trials(settings, opened, space, monitor, objective)
    progress.close()
    reporter.write(study, plots=True)
    retrain = None
    if settings.retrain_best and not interrupted:
        retrain = retrain_best(study, ctx, settings.epochs or budget,
                               show_progress=settings.show_progress)
        reporter.write(study, plots=False)
    best = best_trial(study)
    return StudyOutcome(
        study_name=settings.study_name, out_dir=ctx.out_dir, summary=summarize(study, budget),
        best_value=best.value if best else None, best_trial=best.number if best else None,
        interrupted=interrupted, worker_errors=errors, retrain=retrain,
    )
