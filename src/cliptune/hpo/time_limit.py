"""A study's time limit: what each trial costs, projected to the target's full fidelity.

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
