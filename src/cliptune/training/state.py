"""The train state: everything that changes while training, saved and restored as one dict,
and the one object that advances it (`optimizer_step` counts steps, `end_epoch` epochs).

Model, optimizer, learning-rate schedule, fp16 grad scaler, step and epoch counters,
the schedule's length, validation history and best epoch. A checkpoint is
`TrainState.state_dict()` plus the config and tokenizer. No random state: the data order
and augmentation come from (seed, epoch) (`cliptune.data.loader`) and each rank's torch
generator is seeded per batch (`runtime.seed_batch`), so a resume on any number of GPUs
needs none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cliptune.config import TrainConfig
from cliptune.errors import ConfigError
from cliptune.metrics import metric_is_minimised
from cliptune.model import CLIP
from cliptune.optim import build_optimizer, build_scheduler


def is_improvement(value: float, best: dict[str, float], metric: str) -> bool:
    """Whether `value` of `metric` beats the best so far (`{}`: nothing yet, so it does)."""
    if not best:
        return True
    return value < best["value"] if metric_is_minimised(metric) else value > best["value"]


@dataclass
class TrainState:
    """Model, optimizer, schedule and counters of one run."""

    model: CLIP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    total_steps: int  # optimizer steps the schedule was built for
    schedule_epochs: int  # epochs the schedule was built for
    step: int = 0
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    # Mid-epoch checkpoints: {"epoch", "batches" done, "loss" (rank-mean sum so far),
    # "shards" (per rank, the shard workers' counters; None for the image cache)}.
    position: dict[str, Any] | None = None

    @classmethod
    def create(
        cls, model: CLIP, config: TrainConfig, *, precision: str, total_steps: int,
        schedule_epochs: int,
    ) -> TrainState:
        """Fresh optimizer, a warmup + cosine schedule over `total_steps` optimizer steps
        (`schedule_epochs` epochs), and a GradScaler when the precision is fp16."""
        optimizer = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, total_steps, config)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        return cls(model, optimizer, scheduler, scaler, total_steps, schedule_epochs)

    def optimizer_step(self, grad_clip: float) -> torch.Tensor:
        """Unscale (fp16), clip, step, zero the gradients, advance the schedule, clamp the
        temperature, count the step. Returns the gradient norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   grad_clip or float("inf"))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.clamp_logit_scale()
        self.step += 1
        return grad_norm

    def end_epoch(self, metrics: dict[str, float], best_metric: str) -> bool:
        """Count the epoch `metrics` belong to as done (its mid-epoch position is spent),
        append them to the history and return whether `best_metric` improved (and if so,
        remember this epoch as the best)."""
        if best_metric not in metrics:
            raise ConfigError(
                f"train.best_metric={best_metric[4:]!r} is not a validation metric; choose one "
                f"of: {', '.join(k[4:] for k in metrics if k.startswith('val_'))}"
            )
        self.epoch, self.position = int(metrics["epoch"]), None
        self.history.append(metrics)
        value = metrics[best_metric]
        improved = is_improvement(value, self.best, best_metric)
        if improved:
            self.best = {"value": value, "epoch": metrics["epoch"]}
        return improved

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for `save_checkpoint` (tensors stay where they are)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "schedule": {"total_steps": self.total_steps, "epochs": self.schedule_epochs},
            "epoch": self.epoch,
            "step": self.step,
            "best": dict(self.best),
            "history": list(self.history),
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> str | None:
        """Restore from a checkpoint dict loaded on the CPU; the optimizer state follows the
        parameters to their device. Returns a note when the checkpoint carries the random
        state older versions saved (one per CUDA device of the machine that wrote it): it
        is not restored, so a resume never depends on how many GPUs there were."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = list(state.get("history", []))
        self.best = dict(state.get("best", {}))
        self.position = state.get("position")
        rng = state.get("rng")
        if not rng:
            return None
        gpus = len(rng.get("cuda") or [])
        return (f"the checkpoint holds the random state of an older version (CPU and {gpus} "
                "CUDA device(s)); it is not restored: each batch's random numbers now come "
                "from (seed, epoch, batch, rank), whatever the number of GPUs")

