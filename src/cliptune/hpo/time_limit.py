"""A study's time limit: what each trial costs, and the study's best trial under the limit.

Every trial records `run_seconds` (wall time of its training and validation, pruned
trials included) and `epoch_seconds` (their mean per epoch). After its first epoch it
also records `projected_train_seconds`: how long the target experiment with the
trial's parameters would train at the target's full fidelity on this machine,

    target epochs x (training time x target training images / trial training images
                     + validation time x target validation images / trial validation images)

from that first epoch: the training part of an epoch scales with the images it trains
on, validation with the images it embeds; under patch dropout the training part of each
target epoch also scales with its training FLOPs over those of the measured epoch (the
unmasked last epochs, `train.unmasked_epochs`, cost more than a masked first one). The
target trains on its whole splits (capped only by its own max_samples /
max_eval_samples) of the trials' dataset (a fidelity's `set` keys are cost-only
settings, so the dataset is the same). With a limit (`max_train_seconds`)
the trial also gets the Optuna constraint `train_seconds` = projected - limit through
`trial.set_constraint` (feasible when <= 0): TPESampler and GPSampler then sample away
from settings that are too slow. The study's best trial (`best_trial`) is the best
feasible complete trial, or, when none is feasible, the best of the others.

The projection is a measurement of this machine as the trial found it: on another
machine, or with other trials sharing its cores (--workers), it differs. When every
trial is over the limit, TPE draws for the least violation (the fastest settings), so a
limit only helps where some settings of the space are feasible.
"""

from __future__ import annotations

import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

from cliptune.config import RunConfig
from cliptune.data import PreparedData
from cliptune.hpo.study import METRICS
from cliptune.model.flops import epochs_flops_per_sample, training_flops_per_sample

CONSTRAINT = "train_seconds"  # the Optuna constraint: projected - limit


def target_sizes(target: RunConfig, data: PreparedData) -> tuple[int, int]:
    """Training and validation images of a run of `target` on `data`'s dataset: the
    uncapped splits, capped by the target's own max_samples / max_eval_samples."""
    sizes = data.uncapped_sizes or {"train": len(data.train), "val": len(data.val)}
    caps = (target.data.max_samples, target.data.max_eval_samples)
    return tuple(n if cap is None else min(n, cap)  # type: ignore[return-value]
                 for n, cap in zip((sizes["train"], sizes["val"]), caps, strict=True))


def project_train_seconds(metrics: dict[str, float], trial_sizes: tuple[int, int],
                          target: tuple[int, int], target_epochs: int,
                          train_epochs: float | None = None) -> float:
    """The target's training time from one trial epoch's `epoch_time` and `train_time`
    (see the module docstring); sizes are (training, validation) images. `train_epochs`:
    the target's training compute in units of the measured epoch's (default: its epochs)."""
    train_s = metrics["train_time"]
    val_s = max(0.0, metrics["epoch_time"] - train_s)
    train_epochs = target_epochs if train_epochs is None else train_epochs
    return (train_epochs * train_s * target[0] / max(1, trial_sizes[0])
            + target_epochs * val_s * target[1] / max(1, trial_sizes[1]))


def measured_epochs(full: RunConfig, measured: RunConfig) -> float:
    """The training compute of all `full`'s epochs in units of `measured`'s first epoch
    (its epochs when neither uses patch dropout)."""
    first = training_flops_per_sample(measured.model, masked=measured.train.masks_patches(1))
    return epochs_flops_per_sample(full.model, full.train, full.train.epochs) / first


def record_projection(trial: optuna.Trial, full: RunConfig, data: PreparedData,
                      metrics: dict[str, float], limit: float | None,
                      measured: RunConfig | None = None) -> float:
    """Store trial `trial`'s projected training time at full fidelity (`full`: the target
    with its parameters; `measured`: the trial's own config, default `full`) and, with a
    `limit`, its constraint; returns the projection."""
    seconds = project_train_seconds(metrics, (len(data.train), len(data.val)),
                                    target_sizes(full, data), full.train.epochs,
                                    measured_epochs(full, measured or full))
    trial.set_user_attr("projected_train_seconds", seconds)
    if limit is not None:
        trial.set_constraint(CONSTRAINT, seconds - limit)
    return seconds


def record_times(trial: optuna.Trial, history: list[dict[str, float]], seconds: float) -> None:
    """Store the trial's `run_seconds` and mean `epoch_seconds` (none when no epoch ran)."""
    trial.set_user_attr("run_seconds", seconds)
    if history:
        trial.set_user_attr("epoch_seconds", statistics.fmean(m["epoch_time"] for m in history))


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
