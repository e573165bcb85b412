"""The Optuna objective: one trial = one short CLIP training run, pruned by epoch."""

from __future__ import annotations

import gc
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from cliptune.config import RunConfig, config_to_dict
from cliptune.data import PreparedData
from cliptune.errors import ConfigError, TrainingDiverged
from cliptune.hpo.owners import Beat
from cliptune.hpo.search_space import SearchSpace
from cliptune.hpo.study import METRICS, TrialFailed
from cliptune.trainer import Trainer

# The Trainer's callback key of each objective metric.
CALLBACK_KEYS = {"val_loss": "val_loss", "rsum": "val_rsum"}
SCRATCH_DIR = ".hpo-scratch"  # under checkpoints_dir: trial checkpoints until judged


def trial_run_name(study_name: str, number: int) -> str:
    """Run name of trial `number`: `runs/<study>/trial_<nnnn>/` in TensorBoard."""
    return f"{study_name}/trial_{number:04d}"


def scratch_dir(checkpoints_dir: str, study_name: str, number: int) -> Path:
    """Where trial `number` checkpoints until the driver keeps or deletes its best.pt."""
    return Path(checkpoints_dir) / SCRATCH_DIR / trial_run_name(study_name, number)


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


@dataclass
class ObjectiveSettings:
    """What every trial of a study shares."""

    study_name: str
    metric: str  # val_loss | rsum
    epochs: int  # the per-trial budget


class Objective:
    """Callable objective: samples the search space, trains, reports every epoch.

    One `PreparedData` is loaded once per process and shared by all trials whose
    data settings match (image size, vocabulary and context length included).
    """

    def __init__(self, space: SearchSpace, base: RunConfig, settings: ObjectiveSettings):
        if settings.metric not in METRICS:
            raise ConfigError(f"--metric {settings.metric!r}: choose one of {', '.join(METRICS)}")
        self.space = space
        self.base = base
        self.settings = settings
        self._data: PreparedData | None = None
        self._data_key: str | None = None

    def trial_config(self, number: int, params: dict) -> RunConfig:
        """The config trial `number` trains with: base + params + name, budget, folders."""
        config = self.space.apply(self.base, params)
        config.name = trial_run_name(self.settings.study_name, number)
        config.checkpoints_dir = str(Path(self.base.checkpoints_dir) / SCRATCH_DIR)
        config.train.epochs = self.settings.epochs
        config.train.best_metric = CALLBACK_KEYS[self.settings.metric]
        config.train.save_last = False  # trials never resume: best.pt is all they keep
        return config

    def load_data(self, *, quiet: bool = True) -> None:
        """Load the dataset now: data errors stop the study before its first trial."""
        self._data_for(self.base)
        self._data = Trainer(self.base, show_progress=not quiet, resume=None).prepare_data()

    @property
    def data(self) -> PreparedData | None:
        """The dataset the trials share (None until loaded)."""
        return self._data

    def _data_for(self, config: RunConfig) -> PreparedData | None:
        """The loaded data if `config` needs the same (else None: the trial loads its own)."""
        m = config.model
        key = repr((config_to_dict(config)["data"], config.seed, m.image_size,
                    m.vocab_size, m.context_length))
        if key != self._data_key:
            self._data, self._data_key = None, key
        return self._data

    def __call__(self, trial: optuna.Trial) -> float:
        with Beat(trial):  # owner and liveness first: a driver must see who runs it
            return self._call(trial)

    def _call(self, trial: optuna.Trial) -> float:
        params = self.space.suggest(trial)
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
        key = CALLBACK_KEYS[self.settings.metric]
        minimize = METRICS[self.settings.metric] == "minimize"
        history: list[dict[str, float]] = []

        def report(trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
            history.append(metrics)
            trial.report(metrics[key], epoch)
            if trial.should_prune():
                _record_best(trial, history, key, minimize)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        trainer = Trainer(
            config,
            data=self._data_for(config),
            callbacks=[report],
            show_progress=False,
            resume=None,
            hparams_extra={"trial": trial.number, "study": self.settings.study_name,
                           **{f"hpo.{name}": value for name, value in params.items()}},
        )
        try:
            self._data = trainer.prepare_data()
            trainer.fit()
        except BaseException:
            shutil.rmtree(trainer.checkpoint_dir, ignore_errors=True)
            raise
        finally:  # fit may rename the run when its folder already exists
            trial.set_user_attr("run_dir", str(trainer.run_dir))
        value = _record_best(trial, history, key, minimize)
        checkpoint = trainer.checkpoint_dir / "best.pt"
        if checkpoint.is_file():
            trial.set_user_attr("checkpoint", str(checkpoint))
        return value


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
