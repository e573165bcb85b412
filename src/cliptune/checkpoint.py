"""Checkpoints: the file format, what a checkpoint holds, a run's checkpoint folder, and
models rebuilt from a file. Training, HPO and export all go through this module.

A checkpoint is a plain dict (containers, numbers, strings, tensors) tagged with
`format` and `version`, written atomically and read with `weights_only=True`. It holds
the full config and the tokenizer next to the weights, so a model can be rebuilt from
the file alone. A *run* checkpoint (`run_checkpoint`) also holds the train state, so a
run can resume from it; a *weights-only* one (`weights_checkpoint`: an HPO trial's or a
study's best.pt) holds the weights, history and best epoch, and serves evaluate.py,
retrieve.py and the exports.

A run's folder (`Checkpointer`) holds best.pt, epoch_<n>.pt (rotated) and last.pt; the
resume rules (which file, whether the config may resume it, the schedule it keeps) live
here too. Under torchrun only rank 0 writes; every rank reads the same file.
"""


from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cliptune import distributed
from cliptune.config import (
    RunConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    model_config_for,
)
from cliptune.errors import CheckpointError, CliptuneError, ConfigError
from cliptune.files import atomic_path, write_atomic
from cliptune.model import CLIP
from cliptune.runtime import resolve_device
from cliptune.tokenizer import Tokenizer

FORMAT = "cliptune-checkpoint"
VERSION = 1
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` (plus `format` and `version`) to `path` atomically.

    The data goes to a temporary file in the same folder, is flushed to disk and then
    renamed over `path`, so a crash or a full disk never leaves a half-written
    checkpoint: on failure the temporary file is removed, any previous file at `path`
    is left as it was, and `CheckpointError` is raised.
    """
    path = Path(path)
    payload = {**state, "format": FORMAT, "version": VERSION}
    try:
        with atomic_path(path, durable=True) as temp, open(temp, "wb") as file:
            torch.save(payload, file)
    except OSError as err:
        raise CheckpointError(f"could not write checkpoint {path}: {err}") from err


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; raise `CheckpointError` naming the file
    when it is missing, not a cliptune checkpoint, or corrupt/truncated."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as file:
        if file.read(4) != _ZIP_MAGIC:
            raise CheckpointError(f"{path} is not a cliptune checkpoint (not a PyTorch file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} is corrupt or not a cliptune checkpoint: it holds data that cannot be "
            "loaded safely"
        ) from None
    # A damaged archive surfaces as RuntimeError, OSError, EOFError, zlib or struct
    # errors depending on where it is cut; all mean the same to the user.
    except Exception as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({type(err).__name__}); it cannot be used, pick "
            "another checkpoint"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cliptune checkpoint (no {FORMAT!r} tag)")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state['version']}; this cliptune reads "
            f"version {VERSION} or older, upgrade cliptune"
        )
    return state


def run_checkpoint(config: RunConfig, tokenizer: Tokenizer, metrics: dict[str, float],
                   train_state: dict[str, Any]) -> dict[str, Any]:
    """What a run checkpoint holds: config, tokenizer, the epoch's `metrics` and the train
    state (`TrainState.state_dict()`: weights, optimizer, schedule, scaler, counters,
    history, best, mid-epoch position). A run resumes from it."""
    return {"config": config_to_dict(config), "tokenizer": tokenizer.to_json(),
            "metrics": metrics, **train_state}


def weights_checkpoint(config: RunConfig, tokenizer: Tokenizer, metrics: dict[str, float],
                       weights: dict[str, torch.Tensor], *, best: dict[str, float],
                       history: list[dict[str, float]]) -> dict[str, Any]:
    """What a weights-only checkpoint holds: config, tokenizer, the weights of the epoch
    `metrics` belong to, history and best; no optimizer, schedule or scaler. evaluate.py,
    retrieve.py, export and `load_model` read it; a run cannot resume from it."""
    return {"config": config_to_dict(config), "tokenizer": tokenizer.to_json(),
            "metrics": metrics, "model": weights, "epoch": int(metrics["epoch"]),
            "best": dict(best), "history": list(history)}


def saved_schedule(checkpoint: dict[str, Any], steps_per_epoch: int) -> tuple[int, int]:
    """(total_steps, epochs) a run checkpoint's schedule was built for; checkpoints older
    than the `schedule` entry were built for their config's epochs."""
    if "schedule" in checkpoint:
        return int(checkpoint["schedule"]["total_steps"]), int(checkpoint["schedule"]["epochs"])
    epochs = int(checkpoint["config"]["train"]["epochs"])
    return steps_per_epoch * epochs, epochs


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, ready for inference."""

    model: CLIP
    tokenizer: Tokenizer
    config: RunConfig
    checkpoint: dict[str, Any]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model (eval mode, on `device`), its tokenizer and config from `path`."""
    checkpoint = load_checkpoint(path)
    missing = [key for key in ("config", "tokenizer", "model") if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it cannot rebuild a model")
    try:
        config = config_from_dict(checkpoint["config"])
    except CliptuneError as err:
        raise CheckpointError(f"{path}: its saved config is invalid: {err}") from None
    if "split_seed" not in (checkpoint["config"].get("data") or {}):
        # written before data.split_seed existed, when the run's seed decided the split:
        # evaluating it on another split could score it on its own training images
        config.data.split_seed = config.seed
    model = CLIP(model_config_for(config))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the saved config: {err}") from None
    try:
        tokenizer = Tokenizer.from_json(checkpoint["tokenizer"])
    except CliptuneError as err:
        raise CheckpointError(f"{path}: its saved tokenizer is invalid: {err}") from None
    model.to(resolve_device(str(device))).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, checkpoint=checkpoint)


# -------------------------------------------------------------- a run's folder

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


STUDY_RECORD = "best.json"  # beside best.pt in a study's folder: which trial it holds


def folder_owner(folder: Path) -> str | None:
    """Who keeps checkpoints in `folder`: `"study"` (a study's best.pt + best.json),
    `"run"` (a training run's last.pt, epoch_<n>.pt or metrics.json) or None. Runs and
    studies both keep their best model in `<checkpoints_dir>/<name>/`, so a name is one
    or the other, never both."""
    if (folder / STUDY_RECORD).is_file():
        return "study"
    if any((folder / name).is_file() for name in ("last.pt", "metrics.json")) or any(
            folder.glob("epoch_*.pt")):
        return "run"
    return None


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
        write_atomic(self.directory / "metrics.json", json.dumps(payload, indent=2))


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
    folder = Path(config.checkpoints_dir) / config.name
    taken = distributed.current().is_main and folder_owner(folder) == "study"
    path, config.name, taken = distributed.broadcast_object((path, config.name, taken))
    if taken:  # every rank stops alike
        raise ConfigError(
            f"run name {config.name!r} is taken by study {config.name!r}: {folder} holds "
            f"that study's best trial (best.pt + {STUDY_RECORD}), which this run would "
            "overwrite. Name the run otherwise: --run-name NAME")
    if path is None:
        return None, None
    state = load_checkpoint(path)  # on the CPU: weights and optimizer state move later
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
