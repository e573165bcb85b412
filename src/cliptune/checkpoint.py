"""Checkpoint files: atomic save, safe load (`weights_only=True`), and model restoration.

A checkpoint is a plain dict (containers, numbers, strings, tensors) tagged with
`format` and `version`. It holds the full config and the tokenizer next to the
weights, so a model can be rebuilt from the file alone.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cliptune.config import RunConfig, config_from_dict
from cliptune.errors import CheckpointError, CliptuneError
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
    temp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as temp:
            temp_name = temp.name
            torch.save(payload, temp)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException as err:
        if temp_name is not None and os.path.exists(temp_name):
            os.remove(temp_name)
        if isinstance(err, OSError):
            raise CheckpointError(f"could not write checkpoint {path}: {err}") from err
        raise


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
    model = CLIP(config.model)
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
