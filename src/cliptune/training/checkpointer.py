"""Checkpoints of a run: which file to resume from, whether resuming is allowed, what to
write after each epoch (best.pt, epoch_<n>.pt with rotation, last.pt).

Under torchrun only rank 0 writes; every rank reads the same file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cliptune import distributed
from cliptune.checkpoint import load_checkpoint, save_checkpoint
from cliptune.config import RunConfig, TrainConfig, config_to_dict
from cliptune.errors import CheckpointError, ConfigError

# Config keys that may change between a run and its resumption without changing its result.
# (train.epochs may shrink, never grow: see `check_schedule`.)
RESUME_FREE_KEYS = {
    ("train", "device"), ("train", "compile"), ("train", "epochs"), ("train", "log_every"),
    ("train", "save_checkpoints"), ("train", "save_last"), ("train", "checkpoint_every"),
    ("train", "checkpoint_every_steps"),
    ("train", "keep_checkpoints"), ("train", "figure_images"), ("data", "num_workers"),
    ("data", "cache_dir"), ("data", "data_dir"), ("data", "download_timeout"),
}


def check_resume_config(saved: dict[str, Any], config: RunConfig) -> None:
    """Refuse to resume when a setting that changes the result differs from the checkpoint's."""
    current = config_to_dict(config)
    changed = []
    for section in ("data", "model", "train"):
        for key, value in saved[section].items():
            if (section, key) in RESUME_FREE_KEYS:
                continue
            if current[section].get(key) != value:
                changed.append(f"{section}.{key}: {value!r} -> {current[section].get(key)!r}")
    if saved.get("seed") != current["seed"]:
        changed.append(f"seed: {saved.get('seed')!r} -> {current['seed']!r}")
    if changed:
        raise ConfigError(
            f"cannot resume run {config.name!r}: its checkpoint was written with a "
            f"different config ({'; '.join(changed)}). Use the same settings, "
            "--no-resume to start a new run, or --run-name NAME."
        )


def check_schedule(name: str, epochs: int, schedule_epochs: int, total_steps: int) -> None:
    """A resumed run keeps the learning-rate schedule it was started with: it may stop
    earlier on that schedule, never run past its end (the cosine would restart)."""
    if epochs > schedule_epochs:
        raise ConfigError(
            f"cannot resume run {name!r} for {epochs} epochs: its learning-rate schedule was "
            f"built for {schedule_epochs} epochs ({total_steps} optimizer steps) and cannot be "
            f"stretched without a jump. Resume with --epochs {schedule_epochs} (or fewer), or "
            "start a new run with --no-resume or --run-name NAME."
        )


def free_run_name(config: RunConfig) -> str:
    """`config.name`, or `<name>-2`, `-3`... : the first whose run and checkpoint folders are
    empty or absent (a fresh run never writes into an old run's folders)."""
    base, n, name = config.name, 1, config.name
    while any(folder.exists() and any(folder.iterdir())
              for folder in (Path(config.runs_dir) / name, Path(config.checkpoints_dir) / name)):
        n += 1
        name = f"{base}-{n}"
    return name


class Checkpointer:
    """Reads and writes the checkpoints of one run folder."""

    def __init__(self, directory: Path, config: TrainConfig, *, writer: bool = True):
        self.directory = Path(directory)
        self.config = config
        self.writer = writer and config.save_checkpoints  # rank 0 with checkpoints on

    @property
    def last(self) -> Path:
        return self.directory / "last.pt"

    @property
    def best(self) -> Path:
        return self.directory / "best.pt"

    def find_resume(self, resume: str | None) -> Path | None:
        """`None`: no resume; `"auto"`: last.pt when present; else the given file (must exist)."""
        if resume is None:
            return None
        if resume == "auto":
            return self.last if self.last.is_file() else None
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"--resume {path}: no such file")
        return path

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        """A checkpoint on the CPU (weights and optimizer state move to the device later)."""
        return load_checkpoint(path, map_location="cpu")

    def save_epoch(self, state: dict[str, Any], epoch: int, improved: bool) -> None:
        """best.pt when `improved`, epoch_<n>.pt every `checkpoint_every` epochs (keeping the
        newest `keep_checkpoints`), then last.pt (when `save_last`)."""
        if not self.writer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if improved:
            save_checkpoint(state, self.best)
        every = self.config.checkpoint_every
        if every and epoch % every == 0:
            save_checkpoint(state, self.directory / f"epoch_{epoch}.pt")
            kept = sorted(self.directory.glob("epoch_*.pt"),
                          key=lambda p: int(p.stem.split("_")[1]))
            for old in kept[: max(0, len(kept) - self.config.keep_checkpoints)]:
                old.unlink()
        # last.pt goes last: a resumed run never sees an epoch whose best.pt is missing.
        if self.config.save_last:
            save_checkpoint(state, self.last)

    def save_position(self, state: dict[str, Any]) -> None:
        """last.pt written mid-epoch (its `position` says how far the epoch got)."""
        if self.writer and self.config.save_last:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_checkpoint(state, self.last)

    def write_metrics(self, payload: dict[str, Any]) -> None:
        """metrics.json of the run (atomically; only the writer rank, with checkpoints on)."""
        if not self.writer:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "metrics.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        os.replace(tmp, path)


def start_run(
    config: RunConfig, resume: str | None, say: Callable[[str], None] = print
) -> tuple[Path | None, dict[str, Any] | None]:
    """Decide, on rank 0 for every rank, the run's name and the checkpoint it resumes:
    returns `(path, checkpoint)` or `(None, None)`. A fresh run with resume off takes a
    free name (`config.name` is updated); a resumed run must have a compatible config
    (`config.data.source` `auto` becomes the checkpoint's source)."""
    path = Checkpointer(Path(config.checkpoints_dir) / config.name, config.train).find_resume(
        resume)
    if path is None and resume is None and distributed.current().is_main:
        name = free_run_name(config)
        if name != config.name:
            say(f"run {config.name!r} exists and resume is off: this run is named {name!r}")
            config.name = name
    path, config.name = distributed.broadcast_object((path, config.name))
    if path is None:
        return None, None
    state = Checkpointer.load(path)
    if "optimizer" not in state:
        raise CheckpointError(
            f"{path} holds model weights only (an HPO trial's or a study's best.pt): evaluate, "
            "export or retrieve with it, but a run cannot resume from it; start a new run "
            "with --no-resume or --run-name NAME"
        )
    if config.data.source == "auto":
        config.data.source = state["config"]["data"]["source"]
    check_resume_config(state["config"], config)
    return path, state
