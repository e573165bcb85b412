"""Run a study: open it, run trials in one or several processes, keep the reports current.

The driver process owns the console, the reports and the best checkpoint. It makes
the study's data decision and prepares the data (image cache included) before any
trial, see `definition`. With `workers=1` it runs the trials itself; with more it
starts that many processes
(see `workers.py`) and watches the storage for finished trials. Several drivers,
on one machine or many, may share a study: each fails only trials whose owner is
dead, and each draws its own sampler seed.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial

from cliptune.config import RunConfig
from cliptune.data import PreparedData
from cliptune.data.sources import check_paths
from cliptune.errors import ConfigError
from cliptune.hpo.definition import (
    SPACE_ATTR,
    StudyPlan,
    StudySettings,
    adopt_recorded,
    check_fingerprint,
    data_record,
    decide_data,
    driver_seed,
    study_fingerprint,
)
from cliptune.hpo.design import enqueued_trials, resolve_pruner, startup_trials
from cliptune.hpo.objective import CALLBACK_KEYS, Objective, ObjectiveSettings, scratch_dir
from cliptune.hpo.owners import fail_dead_owners
from cliptune.hpo.progress import StudyProgress
from cliptune.hpo.reports import ReportContext, StudyReporter, StudySummary, best_trial, summarize
from cliptune.hpo.results import (
    artifact_folder,
    check_study_folder,
    make_artifact_store,
    settle_trial_checkpoint,
    study_checkpoint_dir,
)
from cliptune.hpo.retrain import retrain_study
from cliptune.hpo.search_space import SearchSpace, describe, enqueue_baseline, space_to_dict
from cliptune.hpo.study import (
    METRICS,
    default_journal_path,
    has_heartbeat,
    is_rdb_url,
    make_pruner,
    make_sampler,
    make_storage,
    open_study,
    pruner_rungs,
    storage_display,
)
from cliptune.hpo.verdict import verdict
from cliptune.hpo.warm_start import enqueue_warm_starts, read_warm_starts
from cliptune.hpo.workers import FINISHED, WorkerJob, run_trials, run_workers, worker_device
from cliptune.runtime import check_precision, resolve_device

SEED_MODULUS = 2**32


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
    worker_messages: list[str] = field(default_factory=list)
    retrain: dict | None = None
    trials_left: int = 0  # of the trials asked for, those that did not finish
    verdict: str = ""  # report.md's first words: did a trial beat the baseline?


def storage_label(settings: StudySettings) -> str:
    """The storage as a user may see it: a journal path, or a URL without its password."""
    if settings.storage is None:
        return str(default_journal_path(settings.results_dir, settings.study_name))
    return storage_display(settings.storage)


def driver_salt(created: bool) -> int:
    """0 for the driver that created the study (reproducible), else a number of this
    host and process, so drivers that join or continue a study draw other seeds."""
    return 0 if created else zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())


def sampler_seed(seed: int, existing_trials: int, worker: int, salt: int = 0) -> int:
    """A continued study gets fresh random draws; each worker and driver its own stream."""
    return (seed + 1000 * existing_trials + worker + salt) % SEED_MODULUS


class TrialMonitor:
    """Reacts to finished trials: best checkpoint, console line, reports.

    It runs inside Optuna's trial callback: an error here is printed and skipped,
    never allowed to end the study.
    """

    def __init__(self, reporter: StudyReporter, progress: StudyProgress, checkpoints_dir: str,
                 study_name: str, already_finished: set[int]):
        self.reporter = reporter
        self.progress = progress
        self.checkpoints_dir, self.study_name = checkpoints_dir, study_name
        self.seen = set(already_finished)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback signature (single-process runs)."""
        if trial.number in self.seen:
            return
        self.seen.add(trial.number)
        try:
            scratch = scratch_dir(self.checkpoints_dir, self.study_name, trial.number)
            settle_trial_checkpoint(study, trial,
                                    study_checkpoint_dir(self.checkpoints_dir, self.study_name),
                                    scratch / "best.pt")
            self.progress.trial_finished(study, trial)
        except Exception as err:  # noqa: BLE001 - reporting must never stop a study
            print(f"warning: after trial {trial.number}: {type(err).__name__}: {err}", flush=True)
        self.reporter.write_safely(study)

    def poll(self, study: optuna.Study) -> None:
        """Handle trials that worker processes finished since the last poll."""
        for trial in study.get_trials(deepcopy=False, states=FINISHED):
            self(study, trial)


def prepare_base(base: RunConfig, space: SearchSpace, metric: str) -> RunConfig:
    """The trial base config with the objective set, checked against the space and the
    machine (device, precision)."""
    base.train.best_metric = CALLBACK_KEYS[metric]
    check_precision(base.train.precision, resolve_device(base.train.device))
    space.check_against(base)
    return base


@dataclass
class OpenedStudy:
    """A study ready for trials: the Optuna study, its resolved definition (settings, plan,
    space: the command line's, with the recorded values it did not set) and what its
    trials share."""

    study: optuna.Study
    storage: object
    base: RunConfig  # the config every trial starts from; its epochs: THE trial budget
    existing: int  # trials it had before this run
    created: bool
    settings: StudySettings
    plan: StudyPlan
    space: SearchSpace
    notes: list[str] = field(default_factory=list)  # what the user should know
    data: PreparedData | None = None  # the trials' data, prepared once (None: no trials)
    startup: int = 10  # the sampler's random start-up (`design.startup_trials`)

    @property
    def budget(self) -> int:
        """Epochs per trial."""
        return self.base.train.epochs


def _existing_study(settings: StudySettings) -> tuple[object | None, optuna.Study | None]:
    """(storage, study) of the study of this name, loaded once; (None, None) when its
    journal does not exist yet (no file is created for it), (storage, None) when the
    storage holds no such study."""
    if settings.storage is None or not is_rdb_url(settings.storage):
        journal = Path(settings.storage or default_journal_path(settings.results_dir,
                                                                settings.study_name))
        if not journal.is_file():
            return None, None
    storage = make_storage(settings.storage, settings.results_dir, settings.study_name,
                           settings.heartbeat)
    try:
        return storage, optuna.load_study(study_name=settings.study_name, storage=storage)
    except KeyError:
        return storage, None


def _adopt(settings: StudySettings, plan: StudyPlan, space: SearchSpace,
           study: optuna.Study | None) -> tuple[StudySettings, StudyPlan, SearchSpace, list[str]]:
    """For an existing study: its recorded metric, search space, target and fidelity where
    the command line did not set them (`settings.given`), with notes on what was taken;
    unchanged for a new study."""
    if study is None:
        return settings, plan, space, []
    attrs = study.user_attrs
    plan, space, metric, adopted = adopt_recorded(
        attrs.get("fingerprint"), attrs.get(SPACE_ATTR), plan, space, settings.metric,
        settings.given)
    notes = [f"took the study's recorded settings for what the command did not set: "
             f"{'; '.join(adopted)}"] if adopted else []
    return replace(settings, metric=metric), plan, space, notes


def resolve_definition(settings: StudySettings, plan: StudyPlan, space: SearchSpace
                       ) -> tuple[StudySettings, StudyPlan, SearchSpace, list[str]]:
    """The definition a command without trials (--check-fidelity) works with: see `_adopt`."""
    return _adopt(settings, plan, space, _existing_study(settings)[1])


def open_for_trials(settings: StudySettings, plan: StudyPlan, space: SearchSpace) -> OpenedStudy:
    """Open the study once: load it (a new study is created only after every check),
    resolve its definition (`_adopt`) and its pruner (`design.resolve_pruner`), read the
    warm starts, make its data decision and prepare the data (when trials are to run),
    check its fingerprint and its one trial budget, enqueue the baseline (new study) and
    the warm starts, fail trials of dead owners, record the study's attributes."""
    storage, loaded = _existing_study(settings)
    settings, plan, space, notes = _adopt(settings, plan, space, loaded)
    settings.check()
    base = prepare_base(plan.trial_base(), space, settings.metric)
    warm = read_warm_starts(settings, space)  # unknown sources fail before anything is written
    settings, design_note = resolve_pruner(settings, base.train.epochs)
    check_study_folder(study_checkpoint_dir(base.checkpoints_dir, settings.study_name),
                       settings.study_name)
    check_paths(base.data)
    sampler = make_sampler(settings.sampler, driver_seed(settings, plan))
    pruner = make_pruner(settings.pruner, base.train.epochs, settings.patience,
                         settings.min_epochs)
    if storage is None:
        storage = make_storage(settings.storage, settings.results_dir, settings.study_name,
                               settings.heartbeat)
    study, created = open_study(storage, settings.study_name, settings.metric, sampler, pruner,
                                loaded)
    existing = len(study.get_trials(deepcopy=False))
    recorded = study.user_attrs.get("fingerprint")
    fingerprint = study_fingerprint(settings.metric, describe(space), plan.target,
                                    plan.fidelity.record(), plan.limits())
    if created:
        for key, value in (("fingerprint", fingerprint), (SPACE_ATTR, space_to_dict(space)),
                           ("epochs", base.train.epochs),
                           ("runs_dir", base.runs_dir), ("checkpoints_dir", base.checkpoints_dir)):
            study.set_user_attr(key, value)
        reason = enqueue_baseline(study, space, plan.target)
        if reason:
            notes.append(f"no baseline trial: {reason}")
        study.set_user_attr("baseline_note", notes[0] if notes else "")
    else:
        changes = check_fingerprint(settings.study_name, recorded, fingerprint,
                                    settings.allow_changes)
        budget = study.user_attrs.get("epochs", base.train.epochs)
        if budget != base.train.epochs:
            if recorded is not None:
                raise ConfigError(
                    f"study {settings.study_name!r} runs its trials for {budget} epochs, this "
                    f"command for {base.train.epochs} (--epochs, or its study file's "
                    "fidelity.epochs): a study keeps one trial budget, even with "
                    "--allow-changes, since its pruner's rungs and the ranking of its trials "
                    f"rest on it. Leave --epochs out (the study continues at {budget}), or "
                    "start a new --study-name")
            base.train.epochs = budget  # a study from before fingerprints: its own budget
            study.pruner = make_pruner(settings.pruner, budget, settings.patience,
                                       settings.min_epochs)
        notes += [f"continued with changed settings (--allow-changes): {c}" for c in changes]
        if not has_heartbeat(storage):
            dead = fail_dead_owners(study, storage, "its owner process died (found when a "
                                    "driver opened the study)")
            for number in dead:  # their half-written checkpoints
                shutil.rmtree(scratch_dir(base.checkpoints_dir, settings.study_name, number),
                              ignore_errors=True)
            if dead:
                notes.append(f"marked {len(dead)} trial(s) of dead workers as failed: {dead}")
    data = None
    if settings.trials > 0:  # the study's one data decision, once its other settings match
        data, note = decide_data(recorded, base, quiet=not settings.show_progress)
        current = {"data": data_record(data)}
        changes = check_fingerprint(settings.study_name, recorded, current, settings.allow_changes)
        notes += [note] if note else []
        notes += [f"continued with other data (--allow-changes): {c}" for c in changes]
        if "data" not in (recorded or {}):  # a new study, or one from before the data part
            study.set_user_attr("fingerprint", {**(recorded or fingerprint), **current})
    notes += [design_note] if design_note else []
    notes += enqueue_warm_starts(study, warm)
    study.set_user_attr("search_space", describe(space))
    # random start-up draws: a tenth of the study's trials, after the enqueued ones
    startup = startup_trials(settings.max_trials or existing + settings.trials,
                             enqueued_trials(study))
    return OpenedStudy(study, storage, base, existing, created, settings, plan, space, notes, data,
                       startup)


def pruner_label(settings: StudySettings, budget: int) -> str:
    """The pruner as the console and report.md name it: its rungs and patience."""
    details = []
    rungs = pruner_rungs(settings.pruner, budget, settings.min_epochs)
    if rungs:
        details.append(f"rungs at epoch(s) {', '.join(map(str, rungs))}")
    if settings.patience is not None:
        details.append(f"patience {settings.patience}")
    return settings.pruner + (f" ({'; '.join(details)})" if details else "")


def report_context(settings: StudySettings, opened: OpenedStudy, space: SearchSpace,
                   plan: StudyPlan) -> ReportContext:
    """What the reports of this study need to know."""
    pruner = pruner_label(settings, opened.budget)
    f = plan.fidelity
    fidelity = (f"{opened.budget} epochs, {f.max_samples or 'all'} training / "
                f"{f.max_eval_samples or 'all'} validation images per trial; target "
                f"`{plan.target_path}` ({plan.target.train.epochs} epochs, all its data)")
    return ReportContext(
        study_name=settings.study_name,
        out_dir=Path(settings.results_dir) / settings.study_name,
        metric=settings.metric, budget=opened.budget, runs_dir=opened.base.runs_dir,
        checkpoints_dir=opened.base.checkpoints_dir, storage_label=storage_label(settings),
        artifact_dir=str(artifact_folder(settings.artifact_store, settings.results_dir,
                                         settings.study_name) or "") or None,
        search_space=describe(space), settings={"sampler": settings.sampler, "pruner": pruner},
        target=plan.target, space=space, fidelity=fidelity, notes=list(opened.notes),
        max_train_seconds=plan.max_train_seconds,
        artifact_store=make_artifact_store(settings.artifact_store, settings.results_dir,
                                           settings.study_name),
    )


def _jobs(settings: StudySettings, opened: OpenedStudy, plan: StudyPlan, space: SearchSpace,
          seed_for) -> list[WorkerJob]:
    threads = max(1, torch.get_num_threads() // settings.workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    jobs = []
    for index in range(settings.workers):
        n = settings.trials // settings.workers + (index < settings.trials % settings.workers)
        if n == 0:
            continue
        base = copy.deepcopy(opened.base)
        base.train.device = worker_device(index, opened.base.train.device, gpus)
        jobs.append(WorkerJob(settings, base, space, index, n,
                              seed_for(index, 0), threads, settings.timeout,
                              data_record(opened.data), plan.target,
                              plan.max_train_seconds, opened.startup))
    return jobs


def run_study(settings: StudySettings, plan: StudyPlan, space: SearchSpace) -> StudyOutcome:
    """Create or continue the study, run `settings.trials` trials, write the reports.

    Ctrl-C stops after the running trial(s); the reports then cover what finished.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    opened = open_for_trials(settings, plan, space)
    settings, plan, space = opened.settings, opened.plan, opened.space
    study, budget = opened.study, opened.budget
    salt = driver_salt(opened.created)

    def seed_for(index: int, restart: int) -> int:
        return sampler_seed(driver_seed(settings, plan), opened.existing,
                            index + restart * max(1, settings.workers), salt)

    study.sampler = make_sampler(settings.sampler, seed_for(0, 0), opened.startup)
    if settings.show_progress:
        state = f"continued, {opened.existing} trials so far" if not opened.created else "new"
        print(f"study {settings.study_name!r} ({state}): {settings.trials} trials of up to "
              f"{budget} epochs, {settings.metric} ({METRICS[settings.metric]}), sampler "
              f"{settings.sampler}, pruner {pruner_label(settings, budget)}, "
              f"{settings.workers} worker(s); "
              f"storage {storage_label(settings)}", flush=True)
        for note in opened.notes:
            print(f"note: {note}", flush=True)
    ctx = report_context(settings, opened, space, plan)
    objective = None
    if settings.trials > 0 and settings.workers == 1:  # the data the driver prepared
        objective = Objective(space, opened.base, ObjectiveSettings(
            settings.study_name, settings.metric, budget, ctx.artifact_store, plan.target,
            plan.max_train_seconds))
        objective.load_data(data=opened.data)
    reporter = StudyReporter(ctx, settings.plot_interval_s)
    progress = StudyProgress(settings.trials or None, settings.metric, budget,
                             settings.show_progress)
    finished_before = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    monitor = TrialMonitor(reporter, progress, opened.base.checkpoints_dir, settings.study_name,
                           finished_before)
    interrupted, errors, messages = False, [], []
    if settings.trials > 0 and objective is not None:
        try:
            run_trials(study, objective, settings.trials, settings.timeout, settings.max_trials,
                       [monitor])
        except KeyboardInterrupt:
            interrupted = True
    elif settings.trials > 0:
        interrupted, errors, messages = run_workers(
            study, opened.storage, _jobs(settings, opened, plan, space, seed_for),
            lambda: monitor.poll(study), seed_for)
    progress.close()
    reporter.write_safely(study, plots=True)
    retrain = None
    if settings.retrain_best and not interrupted:
        retrain = retrain_study(study, ctx, plan, space, settings.seeds,
                                show_progress=settings.show_progress)
        reporter.write_safely(study, plots=False)
    best = best_trial(study)
    return StudyOutcome(
        study_name=settings.study_name, out_dir=ctx.out_dir, summary=summarize(study, budget),
        best_value=best.value if best else None, best_trial=best.number if best else None,
        interrupted=interrupted, worker_errors=errors, worker_messages=messages, retrain=retrain,
        trials_left=max(0, settings.trials - len(monitor.seen - finished_before)),
        verdict=verdict(study, settings.metric, settings.study_name),
    )
