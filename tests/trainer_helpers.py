"""Shared pieces of the Trainer tests: a tiny Shapes config and helpers."""

from __future__ import annotations

import torch
from tiny_model import TINY_MODEL

from cliptune.config import RunConfig, apply_overrides
from cliptune.data import prepare_data

TINY = TINY_MODEL + [
    "data.source=shapes", "data.shapes_images=80", "data.val_size=16", "data.test_size=16",
    "train.epochs=2", "train.batch_size=16", "train.eval_batch_size=16", "train.log_every=1",
    "train.figure_images=2", "train.precision=fp32",
    "train.device=cpu",  # exact-number tests: never TF32 on a GPU machine
]


def tiny_config(tmp_path, cache_dir, *extra) -> RunConfig:
    config = apply_overrides(RunConfig(name="run"), TINY + list(extra))
    config.data.cache_dir = str(cache_dir)
    config.runs_dir = str(tmp_path / "runs")
    config.checkpoints_dir = str(tmp_path / "checkpoints")
    return config


def tiny_data(tmp_path, cache_dir):
    config = tiny_config(tmp_path, cache_dir)
    m = config.model
    return prepare_data(config.data, image_size=m.image_size,
                        vocab_size=m.vocab_size, context_length=m.context_length, quiet=True)


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class Interrupt(Exception):
    pass


def interrupt_after(epoch_to_stop: int):
    """An epoch callback that raises `Interrupt` after `epoch_to_stop` (as a kill would)."""

    def callback(trainer, epoch, metrics):
        if epoch == epoch_to_stop:
            raise Interrupt

    return callback
