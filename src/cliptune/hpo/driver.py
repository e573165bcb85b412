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

import os
import shutil
import socket
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial

from cliptune.data import PreparedData
from cliptune.data.sources import check_paths
from cliptune.errors import ConfigError
from cliptune.hpo.definition import (
    SPACE_ATTR,
    StudyDefinition,
    StudySettings,
    adopt_recorded,
    check_fingerprint,
    decide_data,
    driver_seed,
)
from cliptune.hpo.design import enqueued_trials, resolve_pruner, startup_trials
from cliptune.hpo.objective import Objective, scratch_dir
from cliptune.hpo.owners import fail_dead_owners
from cliptune.hpo.report.files import (
    ReportContext,
    StudyReporter,
    StudySummary,
    best_trial,
    summarize,
)
from cliptune.hpo.report.progress import StudyProgress
from cliptune.hpo.results import (
    artifact_folder,
    check_study_folder,
    make_artifact_store,
    settle_trial_checkpoint,
    study_checkpoint_dir,
)
from cliptune.hpo.retrain import retrain_study
from cliptune.hpo.search_space import describe, enqueue_baseline, space_to_dict
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

SEED_MODULUS = 2**32


@dataclass
class StudyOutcome:
    """What a call to `run_study` did."""

    study_name: str
    metric: str
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


@dataclass
class OpenedStudy:
    """A study ready for trials: the Optuna study, its resolved definition (the command
    line's, with the recorded values it did not set) and the trials' data."""

    study: optuna.Study
    storage: object
    definition: StudyDefinition
    settings: StudySettings  # the command's, with `--pruner auto` made concrete
    existing: int  # trials it had before this run
    created: bool
    notes: list[str] = field(default_factory=list)  # what the user should know
    data: PreparedData | None = None  # the trials' data, prepared once (None: no trials)
    startup: int = 10  # the sampler's random start-up (`design.startup_trials`)


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


def _adopt(settings: StudySettings, definition: StudyDefinition,
           study: optuna.Study | None) -> tuple[StudyDefinition, list[str]]:
    """For an existing study: its recorded metric, search space, target, fidelity and
    limits where the command line did not set them (`settings.given`), with notes on
    what was taken; unchanged for a new study."""
    if study is None:
        return definition, []
    attrs = study.user_attrs
    definition, adopted = adopt_recorded(definition, attrs.get("fingerprint"),
                                         attrs.get(SPACE_ATTR), settings.given)
    notes = [f"took the study's recorded settings for what the command did not set: "
             f"{'; '.join(adopted)}"] if adopted else []
    return definition, notes


def resolve_definition(settings: StudySettings, definition: StudyDefinition
                       ) -> tuple[StudyDefinition, list[str]]:
    """The definition a command without trials (--check-fidelity) works with: see `_adopt`."""
    return _adopt(settings, definition, _existing_study(settings)[1])


def open_for_trials(settings: StudySettings, definition: StudyDefinition) -> OpenedStudy:
    """Open the study once: load it (a new study is created only after every check),
    resolve its definition (`_adopt`) and its pruner (`design.resolve_pruner`), read the
    warm starts, make its data decision and prepare the data (when trials are to run),
    check its fingerprint and its one trial budget, enqueue the baseline (new study) and
    the warm starts, fail trials of dead owners, record the study's attributes."""
    storage, loaded = _existing_study(settings)
    definition, notes = _adopt(settings, definition, loaded)
    settings.check()
    definition.check_machine()
    base = definition.trial_base
    warm = read_warm_starts(settings, definition.space)  # unknown sources fail first
    settings, design_note = resolve_pruner(settings, definition.budget, definition.metric)
    check_study_folder(study_checkpoint_dir(base.checkpoints_dir, settings.study_name),
                       settings.study_name)
    check_paths(base.data)
    sampler = make_sampler(settings.sampler, driver_seed(settings, definition))
    pruner = make_pruner(settings.pruner, definition.budget, settings.patience,
                         settings.min_epochs)
    if storage is None:
        storage = make_storage(settings.storage, settings.results_dir, settings.study_name,
                               settings.heartbeat)
    study, created = open_study(storage, settings.study_name, definition.metric, sampler,
                                pruner, loaded)
    existing = len(study.get_trials(deepcopy=False))
    recorded = study.user_attrs.get("fingerprint")
    if created:
        for key, value in (("fingerprint", definition.record()),
                           (SPACE_ATTR, space_to_dict(definition.space)),
                           ("epochs", definition.budget), ("runs_dir", base.runs_dir),
                           ("checkpoints_dir", base.checkpoints_dir)):
            study.set_user_attr(key, value)
        reason = enqueue_baseline(study, definition.space, definition.target)
        if reason:
            notes.append(f"no baseline trial: {reason}")
        study.set_user_attr("baseline_note", notes[0] if notes else "")
    else:
        changes = check_fingerprint(settings.study_name, recorded, definition.record(),
                                    settings.allow_changes)
        budget = study.user_attrs.get("epochs", definition.budget)
        if budget != definition.budget:
            if recorded is not None:
                raise ConfigError(
                    f"study {settings.study_name!r} runs its trials for {budget} epochs, this "
                    f"command for {definition.budget} (--epochs, or its study file's "
                    "fidelity.epochs): a study keeps one trial budget, even with "
                    "--allow-changes, since its pruner's rungs and the ranking of its trials "
                    f"rest on it. Leave --epochs out (the study continues at {budget}), or "
                    "start a new --study-name")
            # a study from before fingerprints: its own budget, everywhere
            definition = replace(definition, fidelity=replace(definition.fidelity,
                                                              epochs=budget))
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
        definition, data, note = decide_data(definition, recorded,
                                             quiet=not settings.show_progress)
        current = {"data": definition.data}
        changes = check_fingerprint(settings.study_name, recorded, current, settings.allow_changes)
        notes += [note] if note else []
        notes += [f"continued with other data (--allow-changes): {c}" for c in changes]
        if "data" not in (recorded or {}):  # a new study, or one from before the data part
            study.set_user_attr("fingerprint", {**(recorded or definition.record()), **current})
    notes += [design_note] if design_note else []
    notes += enqueue_warm_starts(study, warm)
    study.set_user_attr("search_space", describe(definition.space))
    # random start-up draws: a tenth of the study's trials, after the enqueued ones
    startup = startup_trials(settings.max_trials or existing + settings.trials,
                             enqueued_trials(study))
    return OpenedStudy(study, storage, definition, settings, existing, created, notes, data,
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


def report_context(settings: StudySettings, opened: OpenedStudy) -> ReportContext:
    """What the reports of this study need to know."""
    return ReportContext(
        opened.definition, settings.study_name, Path(settings.results_dir) / settings.study_name,
        storage_label=storage_label(settings),
        artifact_dir=str(artifact_folder(settings.artifact_store, settings.results_dir,
                                         settings.study_name) or "") or None,
        settings={"sampler": settings.sampler,
                  "pruner": pruner_label(settings, opened.definition.budget)},
        notes=list(opened.notes),
        artifact_store=make_artifact_store(settings.artifact_store, settings.results_dir,
                                           settings.study_name),
    )


def _jobs(settings: StudySettings, opened: OpenedStudy, seed_for) -> list[WorkerJob]:
    threads = max(1, torch.get_num_threads() // settings.workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = opened.definition.trial_base.train.device
    jobs = []
    for index in range(settings.workers):
        n = settings.trials // settings.workers + (index < settings.trials % settings.workers)
        if n == 0:
            continue
        jobs.append(WorkerJob(settings, opened.definition, worker_device(index, device, gpus),
                              index, n, seed_for(index, 0), threads, settings.timeout,
                              opened.startup))
    return jobs


def run_study(settings: StudySettings, definition: StudyDefinition) -> StudyOutcome:
    """Create or continue the study, run `settings.trials` trials, write the reports.

    Ctrl-C stops after the running trial(s); the reports then cover what finished.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened
    opened = open_for_trials(settings, definition)
    study, definition, settings = opened.study, opened.definition, opened.settings
    budget = definition.budget
    salt = driver_salt(opened.created)

    def seed_for(index: int, restart: int) -> int:
        return sampler_seed(driver_seed(settings, definition), opened.existing,
                            index + restart * max(1, settings.workers), salt)

    study.sampler = make_sampler(settings.sampler, seed_for(0, 0), opened.startup)
    if settings.show_progress:
        state = f"continued, {opened.existing} trials so far" if not opened.created else "new"
        print(f"study {settings.study_name!r} ({state}): {settings.trials} trials of up to "
              f"{budget} epochs, {definition.metric} ({METRICS[definition.metric]}), sampler "
              f"{settings.sampler}, pruner {pruner_label(settings, budget)}, "
              f"{settings.workers} worker(s); "
              f"storage {storage_label(settings)}", flush=True)
        for note in opened.notes:
            print(f"note: {note}", flush=True)
    ctx = report_context(settings, opened)
    objective = None
    if settings.trials > 0 and settings.workers == 1:  # the data the driver prepared
        objective = Objective(definition, settings.study_name, ctx.artifact_store)
        objective.load_data(data=opened.data)
    reporter = StudyReporter(ctx, settings.plot_interval_s)
    progress = StudyProgress(settings.trials or None, definition, settings.show_progress)
    finished_before = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    monitor = TrialMonitor(reporter, progress, definition.trial_base.checkpoints_dir,
                           settings.study_name, finished_before)
    interrupted, errors, messages = False, [], []
    if settings.trials > 0 and objective is not None:
        try:
            run_trials(study, objective, settings.trials, settings.timeout, settings.max_trials,
                       [monitor])
        except KeyboardInterrupt:
            interrupted = True
    elif settings.trials > 0:
        interrupted, errors, messages = run_workers(
            study, opened.storage, _jobs(settings, opened, seed_for),
            lambda: monitor.poll(study), seed_for)
    progress.close()
    reporter.write_safely(study, plots=True)
    retrain = None
    if settings.retrain_best and not interrupted:
        retrain = retrain_study(study, ctx, settings.seeds, show_progress=settings.show_progress)
        reporter.write_safely(study, plots=False)
    best = best_trial(study)
    return StudyOutcome(
        study_name=settings.study_name, metric=definition.metric, out_dir=ctx.out_dir,
        summary=summarize(study, budget),
        best_value=best.value if best else None, best_trial=best.number if best else None,
        interrupted=interrupted, worker_errors=errors, worker_messages=messages, retrain=retrain,
        trials_left=max(0, settings.trials - len(monitor.seen - finished_before)),
        verdict=verdict(study, definition.metric, settings.study_name),
    )
