"""A study's time limit: what each trial costs, projected to the target's full fidelity.

Every trial records `run_seconds` (wall time of its training and validation, pruned
trials included) and `epoch_seconds` (their mean per epoch). After its first epoch it
also records `projected_train_seconds`: how long the target experiment with the
trial's parameters would train at the target's full fidelity on this machine,

    target epochs x (training time x target training images / trial training images
                     + validation time x target validation images / trial validation images)

from that first epoch: the training part of an epoch scales with the images it trains
on, validation with the images it embeds; the target trains on its whole splits (capped
only by its own max_samples / max_eval_samples) of the trials' dataset (a fidelity's
`set` keys are cost-only settings, so the dataset is the same). With a limit (`max_train_seconds`)
the trial also gets the Optuna constraint `train_seconds` = projected - limit through
`trial.set_constraint` (feasible when <= 0): TPESampler and GPSampler then sample away
from settings that are too slow; the study's best trial is a feasible one when there
is one (see `results`).

The projection is a measurement of this machine as the trial found it: on another
machine, or with other trials sharing its cores (--workers), it differs. When every
trial is over the limit, TPE draws for the least violation (the fastest settings), so a
limit only helps where some settings of the space are feasible.
"""

from __future__ import annotations

import statistics

import optuna

from cliptune.config import RunConfig
from cliptune.data import PreparedData

CONSTRAINT = "train_seconds"  # the Optuna constraint: projected - limit


def target_sizes(target: RunConfig, data: PreparedData) -> tuple[int, int]:
    """Training and validation images of a run of `target` on `data`'s dataset: the
    uncapped splits, capped by the target's own max_samples / max_eval_samples."""
    sizes = data.uncapped_sizes or {"train": len(data.train), "val": len(data.val)}
    caps = (target.data.max_samples, target.data.max_eval_samples)
    return tuple(n if cap is None else min(n, cap)  # type: ignore[return-value]
                 for n, cap in zip((sizes["train"], sizes["val"]), caps, strict=True))


def project_train_seconds(metrics: dict[str, float], trial_sizes: tuple[int, int],
                          target: tuple[int, int], target_epochs: int) -> float:
    """The target's training time from one trial epoch's `epoch_time` and `train_time`
    (see the module docstring); sizes are (training, validation) images."""
    train_s = metrics["train_time"]
    val_s = max(0.0, metrics["epoch_time"] - train_s)
    per_epoch = (train_s * target[0] / max(1, trial_sizes[0])
                 + val_s * target[1] / max(1, trial_sizes[1]))
    return target_epochs * per_epoch


def record_projection(trial: optuna.Trial, full: RunConfig, data: PreparedData,
                      metrics: dict[str, float], limit: float | None) -> float:
    """Store trial `trial`'s projected training time at full fidelity (`full`: the target
    with its parameters) and, with a `limit`, its constraint; returns the projection."""
    seconds = project_train_seconds(metrics, (len(data.train), len(data.val)),
                                    target_sizes(full, data), full.train.epochs)
    trial.set_user_attr("projected_train_seconds", seconds)
    if limit is not None:
        trial.set_constraint(CONSTRAINT, seconds - limit)
    return seconds


def record_times(trial: optuna.Trial, history: list[dict[str, float]], seconds: float) -> None:
    """Store the trial's `run_seconds` and mean `epoch_seconds` (none when no epoch ran)."""
    trial.set_user_attr("run_seconds", seconds)
    if history:
        trial.set_user_attr("epoch_seconds", statistics.fmean(m["epoch_time"] for m in history))
