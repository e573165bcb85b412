"""Optuna building blocks of a study: sampler, pruner, storage, and opening the study."""

from __future__ import annotations

import importlib.util
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError

from cliptune.errors import ConfigError
from cliptune.metrics import metric_is_minimised

SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("auto", "hyperband", "median", "sha", "none")  # auto: see design.resolve_pruner
# --metric choices and their study direction (from the metric registry)
METRICS = {name: "minimize" if metric_is_minimised(name) else "maximize"
           for name in ("val_loss", "rsum")}
# Keep the best fifth at each rung: with 12-epoch trials Hyperband has two brackets,
# one judging trials after 1 and 5 epochs, one after 5 (docs/BENCHMARKS.md has the
# measured saving).
REDUCTION_FACTOR = 5
HEARTBEAT_INTERVAL_S = 60
HEARTBEAT_GRACE_S = 180
STORAGE_ATTEMPTS = 6


class TrialFailed(Exception):
    """A trial that cannot finish (diverged, out of memory, impossible config).

    The study catches it (`study.optimize(catch=(TrialFailed,))`): the trial is
    recorded FAIL with the reason in its `fail_reason` user attribute, and the study
    goes on.
    """


def make_sampler(name: str, seed: int,
                 n_startup_trials: int = 10) -> optuna.samplers.BaseSampler:
    """The sampler `name` (tpe | random | gp), seeded.

    TPE is multivariate (models parameter interactions) with the constant liar, so
    parallel workers do not all sample next to the same running trial. Both are the
    Optuna 5 defaults, set here explicitly so the behaviour does not move with them.
    TPE and GP draw at random until `n_startup_trials` trials of the study have finished
    (complete or pruned, enqueued ones included; the study's budget sets it, see
    `design.startup_trials`).
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=n_startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        if importlib.util.find_spec("scipy") is None:
            raise ConfigError("--sampler gp needs scipy: pip install scipy (or use --sampler tpe)")
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    raise ConfigError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def _check_min_epochs(name: str, epochs: int, min_epochs: int) -> None:
    if name != "none" and (min_epochs < 1 or (min_epochs > 1 and min_epochs >= epochs)):
        raise ConfigError(f"--min-epochs must be at least 1 and below the trial budget "
                          f"(--epochs {epochs}), got {min_epochs}")


def make_pruner(name: str, epochs: int, patience: int | None = None, min_epochs: int = 1,
                reduction_factor: int = REDUCTION_FACTOR) -> optuna.pruners.BasePruner:
    """The pruner `name` for trials of `epochs` epochs (one step per epoch).

    hyperband: brackets of successive halving between `min_epochs` and `epochs` epochs,
    keeping the best 1/`reduction_factor` (a fifth) at each rung (auto: hyperband, once
    `design.resolve_pruner` has placed its first rung);
    median: prune below the median of earlier trials at the same epoch (after 5 trials,
    from epoch `min_epochs` on);
    sha: successive halving from epoch `min_epochs`; none: never prune. `patience` wraps
    the pruner in a PatientPruner (also prunes a trial that stopped improving for that
    many epochs; with `none`, only that).
    """
    _check_min_epochs(name, epochs, min_epochs)
    if name in ("hyperband", "auto"):
        pruner: optuna.pruners.BasePruner | None = optuna.pruners.HyperbandPruner(
            min_resource=min_epochs, max_resource=epochs, reduction_factor=reduction_factor
        )
    elif name == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min_epochs)
    elif name == "sha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_epochs, reduction_factor=reduction_factor
        )
    elif name == "none":
        pruner = None
    else:
        raise ConfigError(f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}")
    if patience is not None:
        if patience < 0:
            raise ConfigError(f"--patience must be >= 0, got {patience}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.pruners.PatientPruner(pruner, patience=patience)
    return pruner or optuna.pruners.NopPruner()


def pruner_rungs(name: str, epochs: int, min_epochs: int = 1) -> list[int]:
    """The epochs at which `make_pruner(name, epochs, min_epochs=...)` compares trials
    (before the last).

    hyperband (and auto) and sha: successive-halving rungs at min_epochs times 1, 5, 25, ...
    (Hyperband's brackets start at later powers, so they add no other epochs); median:
    every epoch from `min_epochs` on; none: no rung. Raises `ConfigError` for a
    `min_epochs` that `make_pruner` refuses.
    """
    _check_min_epochs(name, epochs, min_epochs)
    if name in ("hyperband", "auto", "sha"):
        rungs, step = [], min_epochs
        while step < epochs:
            rungs.append(step)
            step *= REDUCTION_FACTOR
        return rungs
    if name == "median":
        return list(range(min_epochs, epochs))
    return []


def default_journal_path(results_dir: str | Path, study_name: str) -> Path:
    """Where a study lives when no --storage is given."""
    return Path(results_dir) / study_name / "study.journal"


def is_rdb_url(storage: str) -> bool:
    """True for database URLs (postgresql://, mysql://, sqlite:///...); False for files."""
    return "://" in storage


def storage_display(storage: str) -> str:
    """A storage as a user may see it: a journal path, or a URL without its password."""
    if is_rdb_url(storage):
        return make_url(storage).render_as_string(hide_password=True)
    return storage


def database_url(storage: str) -> str:
    """`storage` with PostgreSQL's plain scheme mapped to the psycopg 3 driver that
    requirements.txt installs (`postgresql://` means psycopg2 to SQLAlchemy)."""
    scheme, sep, rest = storage.partition("://")
    return f"postgresql+psycopg{sep}{rest}" if scheme in ("postgresql", "postgres") else storage


@dataclass(frozen=True)
class Heartbeat:
    """Optuna's RDB heartbeat: a running trial's worker beats every `interval_s`; a
    trial silent for `grace_s` is failed by the next driver asking for a trial and
    retried (as a new trial with the same parameters) up to `max_retry` times."""

    interval_s: int = HEARTBEAT_INTERVAL_S
    grace_s: int = HEARTBEAT_GRACE_S
    max_retry: int = 2


def _rdb_storage(url: str, heartbeat: Heartbeat) -> RDBStorage:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},  # survive server restarts, idle drops
            heartbeat_interval=heartbeat.interval_s,
            grace_period=heartbeat.grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                max_retry=heartbeat.max_retry),
        )


def make_storage(storage: str | None, results_dir: str | Path, study_name: str,
                 heartbeat: Heartbeat = Heartbeat()):
    """Open the study storage.

    None: a journal file under `results_dir/<study>/` (survives crashes; several
    processes on one machine share it through a file lock). A path: that journal
    file. A database URL: an RDB storage with a heartbeat, so trials of a worker
    that died on any machine are failed and retried by the others. Several drivers
    may open a fresh database at the same moment: Optuna's schema creation races
    there (`UniqueViolation ... CREATE TYPE`), so it is retried.
    """
    if storage is None or not is_rdb_url(storage):
        path = Path(storage) if storage else default_journal_path(results_dir, study_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    url = database_url(storage)
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return _rdb_storage(url, heartbeat)
        except ImportError as err:
            raise ConfigError(
                f"--storage {storage}: the database driver is missing ({err}); "
                "pip install -r requirements.txt installs psycopg (PostgreSQL); "
                "MySQL needs pip install pymysql"
            ) from None
        except (IntegrityError, ProgrammingError):  # another driver created it meanwhile
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(0.2 + random.random() * (attempt + 1))
        except SQLAlchemyError as err:
            raise ConfigError(f"--storage {storage}: cannot open the database ({err})") from None
    raise AssertionError("unreachable")


def has_heartbeat(storage) -> bool:
    """Whether dead workers' trials are failed by Optuna itself (RDB heartbeat)."""
    return isinstance(storage, RDBStorage)


def open_study(
    storage,
    study_name: str,
    metric: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    loaded: optuna.Study | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study, or load the one of that name (`loaded`: already loaded from
    `storage`); returns (study, created).

    Exactly one of several drivers starting together creates it (the storage refuses
    a second study of the same name), so only that one sets it up.
    """
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    # Load first: a create attempt on an existing study appends to a journal even though
    # it fails, and a command refused later must leave the study's files as they were.
    try:
        if loaded is None:
            loaded = optuna.load_study(study_name=study_name, storage=storage)
        study, created = loaded, False
        study.sampler, study.pruner = sampler, pruner
    except KeyError:
        try:
            study = optuna.create_study(storage=storage, study_name=study_name,
                                        direction=METRICS[metric], sampler=sampler,
                                        pruner=pruner)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another driver created it just now
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                      pruner=pruner)
            created = False
    direction = study.direction.name.lower()
    if direction != METRICS[metric]:
        recorded = next(m for m, d in METRICS.items() if d == direction)
        raise ConfigError(
            f"study {study_name!r} optimizes {recorded}, not {metric}; "
            f"pass --metric {recorded} or a new --study-name"
        )
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names([metric])  # optuna-dashboard shows val_loss, not "Objective 0"
    return study, created
