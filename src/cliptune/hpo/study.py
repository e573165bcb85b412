"""Optuna building blocks of a study: sampler, pruner, storage, and opening the study."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from cliptune.errors import ConfigError

SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("hyperband", "median", "sha", "none")
METRICS = {"val_loss": "minimize", "rsum": "maximize"}
# Keep the best fifth at each rung: with 12-epoch trials Hyperband has two brackets,
# one judging trials after 1 and 5 epochs, one after 5 (docs/BENCHMARKS.md has the
# measured saving).
REDUCTION_FACTOR = 5
HEARTBEAT_INTERVAL_S = 60
HEARTBEAT_GRACE_S = 180


class TrialFailed(Exception):
    """A trial that cannot finish (diverged, out of memory, impossible config).

    The study catches it (`study.optimize(catch=(TrialFailed,))`): the trial is
    recorded FAIL with the reason in its `fail_reason` user attribute, and the study
    goes on.
    """


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler `name` (tpe | random | gp), seeded.

    TPE is multivariate (models parameter interactions) with the constant liar, so
    parallel workers do not all sample next to the same running trial. Both are the
    Optuna 5 defaults, set here explicitly so the behaviour does not move with them.
    """
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        if importlib.util.find_spec("scipy") is None:
            raise ConfigError("--sampler gp needs scipy: pip install scipy (or use --sampler tpe)")
        return optuna.samplers.GPSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, epochs: int, patience: int | None = None) -> optuna.pruners.BasePruner:
    """The pruner `name` for trials of `epochs` epochs (one step per epoch).

    hyperband: brackets of successive halving between 1 and `epochs` epochs, keeping
    the best fifth at each rung;
    median: prune below the median of earlier trials at the same epoch (after 5 trials);
    sha: successive halving from epoch 1; none: never prune. `patience` wraps the
    pruner in a PatientPruner (also prunes a trial that stopped improving for that
    many epochs; with `none`, only that).
    """
    if name == "hyperband":
        pruner: optuna.pruners.BasePruner | None = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs, reduction_factor=REDUCTION_FACTOR
        )
    elif name == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    elif name == "sha":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=REDUCTION_FACTOR
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


def default_journal_path(results_dir: str | Path, study_name: str) -> Path:
    """Where a study lives when no --storage is given."""
    return Path(results_dir) / study_name / "study.journal"


def is_rdb_url(storage: str) -> bool:
    """True for database URLs (postgresql://, mysql://, sqlite:///...); False for files."""
    return "://" in storage


def make_storage(storage: str | None, results_dir: str | Path, study_name: str):
    """Open the study storage.

    None: a journal file under `results_dir/<study>/` (survives crashes; several
    processes on one machine share it through a file lock). A path: that journal
    file. A database URL: an RDB storage with a heartbeat, so trials of a worker
    that died on any machine are marked failed by the others.
    """
    if storage is None or not is_rdb_url(storage):
        path = Path(storage) if storage else default_journal_path(results_dir, study_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RDBStorage(
                storage, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=HEARTBEAT_GRACE_S
            )
    except ImportError as err:
        raise ConfigError(
            f"--storage {storage}: the database driver is missing ({err}); "
            "install it, e.g. pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL)"
        ) from None
    except SQLAlchemyError as err:
        raise ConfigError(f"--storage {storage}: cannot open the database ({err})") from None


def has_heartbeat(storage) -> bool:
    """Whether dead workers' trials are failed by Optuna itself (RDB heartbeat)."""
    return isinstance(storage, RDBStorage)


def open_study(
    storage,
    study_name: str,
    metric: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Create the study, or continue the one of that name (its metric must match)."""
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=METRICS[metric],
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    recorded = study.user_attrs.get("metric")
    if recorded is None:
        study.set_user_attr("metric", metric)
    elif recorded != metric:
        raise ConfigError(
            f"study {study_name!r} optimizes {recorded}, not {metric}; "
            f"pass --metric {recorded} or a new --study-name"
        )
    return study


def fail_orphaned_trials(study: optuna.Study, reason: str) -> list[int]:
    """Mark every RUNNING trial FAIL with `reason` in its user attribute `fail_reason`.

    Only safe when no other driver works on the study (a journal storage has no
    heartbeat to tell a live worker from a dead one). Returns the trial numbers.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        failed.append(trial.number)
    return failed
