"""The study's results: its ranking and its best model.

The ranking: the study's best trial (`best_trial`) is the best feasible complete trial
(within the time limit, see `time_limit`), or, when none is feasible, the best of the
others; `ranked` orders every complete trial that way and `beats` tells whether a
finishing trial would come first.

The best model lives in Optuna's artifact store, and on each machine in
`checkpoints/<study>/best.pt`. A trial keeps its best epoch's weights in memory and,
when it completes better than every trial completed so far, writes them once as a
weights-only checkpoint (config, tokenizer, weights; no optimizer state) into a scratch
folder and uploads that file to the artifact store while the trial still runs
(`checkpoint_artifact` attribute). A trial that is not the best when it ends never
becomes the best later, so the store holds every checkpoint the study's best can be.

On each machine the driver (one process, so no two promotions race) keeps
`checkpoints/<study>/best.pt` + `best.json` (`{trial, value}`) for the study-wide best
trial: it moves the scratch file there when the best trial ran here, or downloads the
best trial's artifact when it ran elsewhere. `os.replace` makes each file appear whole
or not at all. best_results.json names best.pt only when best.json says it is the
best trial's, so results, config and checkpoint always belong to the same trial.

Stores: a folder (`FileSystemArtifactStore`, `optuna-results/<study>/artifacts` by
default; a shared file system for several machines), `s3://BUCKET`
(`Boto3ArtifactStore`, needs boto3; S3 and compatibles such as MinIO through the usual
AWS environment variables) or `gs://BUCKET` (`GCSArtifactStore`, needs
google-cloud-storage).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import (
    Boto3ArtifactStore,
    FileSystemArtifactStore,
    GCSArtifactStore,
    download_artifact,
)
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from cliptune.checkpoint import STUDY_RECORD, folder_owner
from cliptune.errors import ConfigError
from cliptune.files import write_atomic
from cliptune.hpo.study import METRICS


def is_feasible(trial: FrozenTrial | optuna.Trial) -> bool:
    """Whether every constraint of the trial is <= 0 (a trial without any is feasible)."""
    return all(value <= 0 for value in trial.constraints.values())


def _rank(direction: str):
    sign = 1.0 if direction == "minimize" else -1.0
    return lambda t: (not is_feasible(t), sign * t.value, t.number)


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials, best first: feasible ones before the others, then by value."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=_rank(study.direction.name.lower()))


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible complete trial; without one the best complete trial; None while
    no trial has completed."""
    complete = ranked(study)
    return complete[0] if complete else None


def beats(trial_feasible: bool, value: float, best: FrozenTrial | None, metric: str) -> bool:
    """Whether a trial (feasible or not, with `value`) ranks before `best` (None: no best
    yet): a feasible trial before any infeasible one, then by value."""
    if best is None:
        return True
    if trial_feasible != is_feasible(best):
        return trial_feasible
    return value < best.value if METRICS[metric] == "minimize" else value > best.value


def feasibility_counts(study: optuna.Study) -> tuple[int, int]:
    """(feasible, all) complete trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(is_feasible(t) for t in complete), len(complete)


ARTIFACT_ATTR = "checkpoint_artifact"  # trial attribute: the artifact id of its checkpoint
BUCKET_STORES = {"s3://": (Boto3ArtifactStore, "boto3"),
                 "gs://": (GCSArtifactStore, "google-cloud-storage")}


def study_checkpoint_dir(checkpoints_dir: str | Path, study_name: str) -> Path:
    """`<checkpoints_dir>/<study>/`, holding best.pt and best.json."""
    return Path(checkpoints_dir) / study_name


def default_artifact_dir(results_dir: str | Path, study_name: str) -> Path:
    """`<results_dir>/<study>/artifacts`: the artifact store when none is given."""
    return Path(results_dir) / study_name / "artifacts"


def artifact_folder(spec: str | None, results_dir: str | Path, study_name: str) -> Path | None:
    """The folder of the artifact store `--artifact-store` names (None for a bucket):
    optuna-dashboard serves the trials' checkpoints from it (`--artifact-dir`)."""
    if spec is not None and spec.startswith(tuple(BUCKET_STORES)):
        return None
    return Path(spec).expanduser() if spec else default_artifact_dir(results_dir, study_name)


def make_artifact_store(spec: str | None, results_dir: str | Path, study_name: str) -> Any:
    """The artifact store `--artifact-store` names: a folder (default
    `default_artifact_dir`), `s3://BUCKET` or `gs://BUCKET`."""
    for prefix, (store, package) in BUCKET_STORES.items():
        if spec is not None and spec.startswith(prefix):
            bucket = spec[len(prefix):].strip("/")
            if not bucket or "/" in bucket:
                raise ConfigError(f"--artifact-store {spec}: give a bucket, {prefix}BUCKET "
                                  "(artifacts are stored at the bucket's top level)")
            try:
                return store(bucket)
            except ImportError:
                raise ConfigError(f"--artifact-store {spec} needs the {package} package: "
                                  f"pip install {package}") from None
    folder = artifact_folder(spec, results_dir, study_name)
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def check_study_folder(folder: Path, study_name: str) -> None:
    """Refuse a study whose checkpoint folder holds a training run of the same name: the
    study's best.pt would overwrite the run's."""
    if folder_owner(folder) == "run":
        raise ConfigError(
            f"study name {study_name!r} is taken by training run {study_name!r}: {folder} "
            "holds that run's checkpoints (last.pt, metrics.json), and the study's best.pt "
            "would overwrite the run's. Name the study otherwise: --study-name NAME")


def recorded_best(folder: Path) -> dict | None:
    """The `{trial, value}` record of the checkpoint kept in `folder`, if any."""
    path = folder / STUDY_RECORD
    if not path.is_file() or not (folder / "best.pt").is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _install(source: Path, folder: Path, trial: FrozenTrial) -> Path:
    """Move `source` to `folder/best.pt` as trial `trial`'s checkpoint. best.json goes first
    and comes back last: a crash in between leaves no record, never a wrong one. A folder
    that holds a training run of the same name is never written to."""
    check_study_folder(folder, folder.name)
    record = folder / STUDY_RECORD
    record.unlink(missing_ok=True)
    os.replace(source, folder / "best.pt")
    write_atomic(record, json.dumps({"trial": trial.number, "value": trial.value}, indent=2))
    return folder / "best.pt"


def _is_study_best(study: optuna.Study, trial: FrozenTrial) -> bool:
    best = best_trial(study)
    return trial.state == TrialState.COMPLETE and best is not None and best.number == trial.number


def settle_trial_checkpoint(study: optuna.Study, trial: FrozenTrial, folder: Path,
                            source: Path) -> bool:
    """Move `trial`'s checkpoint `source` (in its scratch folder on this machine) to
    `folder/best.pt` if it is the study's best trial.

    Always removes the trial's scratch checkpoint folder. Returns True if promoted.
    """
    promoted = False
    if source.is_file() and _is_study_best(study, trial):
        folder.mkdir(parents=True, exist_ok=True)
        _install(source, folder, trial)
        promoted = True
    shutil.rmtree(source.parent, ignore_errors=True)
    return promoted


def local_best_checkpoint(best: FrozenTrial, folder: Path,
                          store: Any) -> tuple[Path | None, str]:
    """`folder/best.pt` as the checkpoint of trial `best`, downloading it from `store` when
    this machine holds another trial's (or none); returns (path, "") or (None, why not)."""
    record = recorded_best(folder)
    if record is not None and record["trial"] == best.number:
        return folder / "best.pt", ""
    artifact = best.user_attrs.get(ARTIFACT_ATTR)
    if artifact is None:
        return None, (f"trial {best.number} stored no checkpoint in the artifact store (it ran "
                      "with train.save_checkpoints off, or before trials uploaded their "
                      "checkpoints) and this machine does not hold it")
    if store is None:
        return None, f"trial {best.number}'s checkpoint is artifact {artifact}; no store given"
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".best.pt.{os.getpid()}.download"
    partial.unlink(missing_ok=True)
    try:
        download_artifact(artifact_store=store, file_path=str(partial), artifact_id=artifact)
    except ArtifactNotFound:
        partial.unlink(missing_ok=True)
        return None, (f"trial {best.number}'s checkpoint (artifact {artifact}) is not in this "
                      "machine's artifact store: point --artifact-store at the store the "
                      "machine that ran it used (a shared folder, s3:// or gs://)")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return _install(partial, folder, best), ""
