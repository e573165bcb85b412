"""What a run prints and records about itself: epoch lines, the final summary, HParams."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliptune.config import RunConfig, config_to_dict
from cliptune.training.state import TrainState


@dataclass
class FitResult:
    """What `Trainer.fit` returns."""

    best_metric: str
    best_value: float
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_completed: int = 0
    stopped_early: bool = False
    wall_time: float = 0.0

    @classmethod
    def of(cls, state: TrainState, best_metric: str, *, stopped_early: bool,
           wall_time: float) -> FitResult:
        """The result of a run whose train state is `state`, ranked by `best_metric`."""
        best = state.best
        return cls(
            best_metric=best_metric, best_value=best.get("value", float("nan")),
            best_epoch=int(best.get("epoch", 0)),
            best_metrics=dict(state.history[int(best["epoch"]) - 1]) if best else {},
            history=list(state.history), epochs_completed=state.epoch,
            stopped_early=stopped_early, wall_time=wall_time,
        )


def fit_summary(result: FitResult, config: RunConfig, checkpoint_dir: Path, run_dir: Path) -> str:
    """The lines printed at the end of `Trainer.fit`."""
    lines = [f"done: {result.epochs_completed} epochs in {result.wall_time:.0f}s"]
    if result.best_epoch:
        lines.append(f"best {result.best_metric} = {result.best_value:.4f} at epoch "
                     f"{result.best_epoch}")
    if config.train.save_checkpoints:
        files = "best.pt, last.pt" if config.train.save_last else "best.pt"
        lines.append(f"checkpoints: {checkpoint_dir}/ ({files})")
    lines.append(f"TensorBoard: {run_dir}/  ->  tensorboard --logdir {config.runs_dir}")
    return "\n".join(lines)


def hparams(config: RunConfig, extra: dict[str, Any]) -> dict[str, Any]:
    """The run's hyperparameters as flat `section.key` values for TensorBoard."""
    cfg = config_to_dict(config)
    flat: dict[str, Any] = {"seed": cfg["seed"], "data.source": cfg["data"]["source"]}
    for section in ("model", "train"):
        for key, value in cfg[section].items():
            flat[f"{section}.{key}"] = value
    flat.update(extra)
    return flat


def final_metrics(history: list[dict[str, float]]) -> dict[str, float]:
    """The `hparam/...` metrics shown beside the hyperparameters in TensorBoard."""
    if not history:
        return {"hparam/epochs": 0.0}
    last = history[-1]
    return {
        "hparam/best_val_loss": min(h["val_loss"] for h in history),
        "hparam/best_val_rsum": max(h["val_rsum"] for h in history),
        "hparam/val_loss": last["val_loss"],
        "hparam/val_rsum": last["val_rsum"],
        "hparam/val_i2t_r1": last["val_i2t_r1"],
        "hparam/val_t2i_r1": last["val_t2i_r1"],
        "hparam/epochs": float(len(history)),
    }


def epoch_line(m: dict[str, float], epochs: int) -> str:
    """One line per epoch: losses, recalls at 1/5/10 in percent, temperature, time."""

    def recalls(prefix: str) -> str:
        return "/".join(f"{100 * m[f'val_{prefix}_r{k}']:.1f}" for k in (1, 5, 10))

    return (
        f"epoch {int(m['epoch'])}/{epochs} | loss {m['train_loss']:.3f} | "
        f"val_loss {m['val_loss']:.3f} | i2t R@1/5/10 {recalls('i2t')} | "
        f"t2i R@1/5/10 {recalls('t2i')} | temp {m['temperature']:.4f} | "
        f"{m['epoch_time']:.1f}s"
    )
