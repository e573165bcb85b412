"""The Optuna objective: one trial = one short CLIP training run, pruned by epoch.

A trial's Trainer writes no checkpoint: the objective keeps the best epoch's weights in
memory (on the CPU) and, when the trial completes better than every trial completed so
far, writes them once as a weights-only checkpoint and uploads it to the study's
artifact store (see `results`). Each trial records its run time and its
training time projected to the target's full fidelity (see `time_limit`).
"""

from __future__ import annotations

import gc
import math
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from cliptune.checkpoint import save_checkpoint
from cliptune.config import RunConfig, config_to_dict
from cliptune.data import PreparedData
from cliptune.errors import ConfigError, TrainingDiverged
from cliptune.hpo.definition import (
    CALLBACK_KEYS,
    StudyDefinition,
    data_record,
    prepare_trial_data,
)
from cliptune.hpo.owners import Beat
from cliptune.hpo.results import ARTIFACT_ATTR, beats, best_trial, is_feasible
from cliptune.hpo.study import METRICS, TrialFailed
from cliptune.hpo.time_limit import record_projection, record_times
from cliptune.model import CLIP
from cliptune.trainer import Trainer

SCRATCH_DIR = ".hpo-scratch"  # under checkpoints_dir: trial checkpoints until judged


def trial_run_name(study_name: str, number: int) -> str:
    """Run name of trial `number`: `runs/<study>/trial_<nnnn>/` in TensorBoard."""
    return f"{study_name}/trial_{number:04d}"


def scratch_dir(checkpoints_dir: str, study_name: str, number: int) -> Path:
    """Where trial `number` checkpoints until the driver keeps or deletes its best.pt."""
    return Path(checkpoints_dir) / SCRATCH_DIR / trial_run_name(study_name, number)


def data_key(config: RunConfig) -> str:
    """What decides a run's `PreparedData`: runs with equal keys can share it."""
    m = config.model
    return repr((config_to_dict(config)["data"], config.seed, m.image_size, m.vocab_size,
                 m.context_length))


def _failure_reason(err: BaseException) -> str | None:
    """Why a trial failed, for the errors a search can run into; None for bugs."""
    if isinstance(err, TrainingDiverged):
        return f"diverged: {err}"
    if isinstance(err, ConfigError):
        return f"impossible configuration: {err}"
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory: {err}"
    if isinstance(err, RuntimeError) and (
        "out of memory" in str(err) or "can't allocate memory" in str(err)
    ):
        return f"out of memory: {err}"
    return None


def keep_weights(model: CLIP, kept: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """A CPU copy of `model`'s weights, written into `kept` (the previous copy) when given."""
    state = model.state_dict()
    if kept is None:
        return {name: value.detach().to("cpu", copy=True) for name, value in state.items()}
    for name, value in state.items():
        kept[name].copy_(value)
    return kept


class Objective:
    """Callable objective: samples the search space, trains, reports every epoch.

    One `PreparedData` is loaded once per process and shared by all trials whose
    data settings match (image size, vocabulary and context length included).
    """

    def __init__(self, definition: StudyDefinition, study_name: str, artifact_store: Any = None):
        self.definition = definition
        self.study_name = study_name
        self.artifact_store = artifact_store  # the best trials' checkpoints (None: not uploaded)
        self._data: PreparedData | None = None
        self._data_key: str | None = None

    @property
    def base(self) -> RunConfig:
        """The config every trial starts from (the definition's trial base)."""
        return self.definition.trial_base

    def trial_config(self, number: int, params: dict) -> RunConfig:
        """The config trial `number` trains with: base + params + name, folders; the
        budget and the objective stay the study's, whatever the space sets."""
        config = self.definition.space.apply(self.base, params)
        config.name = trial_run_name(self.study_name, number)
        config.checkpoints_dir = str(Path(self.base.checkpoints_dir) / SCRATCH_DIR)
        config.train.epochs = self.definition.budget
        config.train.best_metric = self.base.train.best_metric
        config.train.save_last = False  # trials never resume: best.pt is all they keep
        return config

    def load_data(self, *, quiet: bool = True, data: PreparedData | None = None) -> PreparedData:
        """Load the dataset now (or share `data`, prepared from the base config): data
        errors stop the study before its first trial."""
        self._data_for(self.base)
        self._data = data if data is not None else prepare_trial_data(self.base, quiet=quiet)
        return self._data

    @property
    def data(self) -> PreparedData | None:
        """The dataset the trials share (None until loaded)."""
        return self._data

    def _data_for(self, config: RunConfig) -> PreparedData | None:
        """The loaded data if `config` needs the same (else None: the trial loads its own)."""
        key = data_key(config)
        if key != self._data_key:
            self._data, self._data_key = None, key
        return self._data

    def __call__(self, trial: optuna.Trial) -> float:
        with Beat(trial):  # owner and liveness first: a driver must see who runs it
            return self._call(trial)

    def _call(self, trial: optuna.Trial) -> float:
        params = self.definition.space.suggest(trial)
        try:
            return self._run(trial, params)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C)")
            raise
        except Exception as err:
            reason = _failure_reason(err)
            if reason is None:
                raise
            trial.set_user_attr("fail_reason", reason)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise TrialFailed(reason) from err

    def _run(self, trial: optuna.Trial, params: dict) -> float:
        config = self.trial_config(trial.number, params)
        trial.set_user_attr("config", config_to_dict(config))
        metric = self.definition.metric
        key, minimize = CALLBACK_KEYS[metric], METRICS[metric] == "minimize"
        history: list[dict[str, float]] = []
        keep = config.train.save_checkpoints
        config.train.save_checkpoints = False  # the Trainer writes nothing; see below
        kept: dict[str, torch.Tensor] | None = None

        def report(trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
            nonlocal kept
            history.append(metrics)
            if len(history) == 1:
                full = self.definition.space.apply(self.definition.target, params)
                record_projection(trial, full, trainer.data, metrics,
                                  self.definition.max_train_seconds, trainer.config)
            trial.report(metrics[key], epoch)
            if trial.should_prune():
                _record_best(trial, history, key, minimize)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")
            if keep and trainer.best.get("epoch") == epoch:
                kept = keep_weights(trainer.model, kept)

        trainer = Trainer(
            config,
            data=self._data_for(config),
            callbacks=[report],
            show_progress=False,
            resume=None,
            hparams_extra={"trial": trial.number, "study": self.study_name,
                           **{f"hpo.{name}": value for name, value in params.items()}},
        )
        start = time.perf_counter()
        try:
            self._data = trainer.prepare_data()
            trial.set_user_attr("data", data_record(self._data))
            start = time.perf_counter()  # run_seconds: training and validation only
            trainer.fit()
        finally:  # fit may rename the run when its folder already exists
            trial.set_user_attr("run_dir", str(trainer.run_dir))
            record_times(trial, history, time.perf_counter() - start)
        value = _record_best(trial, history, key, minimize)
        if kept is not None and beats(is_feasible(trial), value, best_trial(trial.study),
                                      metric):
            self._save_best(trial, trainer, kept)
        return value

    def _save_best(self, trial: optuna.Trial, trainer: Trainer,
                   weights: dict[str, torch.Tensor]) -> None:
        """Write the best epoch's weights once (weights-only checkpoint in the trial's
        scratch folder) and upload the file to the artifact store while the trial runs."""
        metrics = next(m for m in trainer.history if m["epoch"] == trainer.best["epoch"])
        path = trainer.checkpoint_dir / "best.pt"
        try:
            save_checkpoint(trainer.checkpoint_state(metrics, weights=weights), path)
            if self.artifact_store is not None:
                artifact = optuna.artifacts.upload_artifact(
                    artifact_store=self.artifact_store, file_path=str(path),
                    study_or_trial=trial)
                trial.set_user_attr(ARTIFACT_ATTR, artifact)  # set once the upload is whole
        except Exception as err:  # noqa: BLE001 - a lost checkpoint must not lose the trial
            print(f"warning: trial {trial.number}: its checkpoint was not stored: "
                  f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)


def _record_best(
    trial: optuna.Trial, history: list[dict[str, float]], key: str, minimize: bool
) -> float:
    """Store the best epoch's validation metrics as user attributes; return its value."""
    finite = [m for m in history if math.isfinite(m[key])]
    if not finite:
        raise TrainingDiverged(f"{key} was never finite")
    best = (min if minimize else max)(finite, key=lambda m: m[key])
    trial.set_user_attr("best_epoch", int(best["epoch"]))
    trial.set_user_attr("metrics", {k: v for k, v in best.items() if k.startswith("val_")})
    return best[key]
