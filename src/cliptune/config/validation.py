"""Value ranges and cross-field constraints of a whole config."""

from __future__ import annotations

import math

from cliptune.config.sections import RunConfig
from cliptune.errors import ConfigError


def validate(config: RunConfig) -> None:
    """Check value ranges and cross-field constraints; raise `ConfigError` on the first fault."""
    m, t, d = config.model, config.train, config.data

    def positive(key: str, value: float) -> None:
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{key} must be positive, got {value}")

    for name in (
        "embed_dim", "image_size", "patch_size", "vision_width", "vision_layers",
        "vision_heads", "text_width", "text_layers", "text_heads", "context_length",
        "vocab_size", "mlp_ratio", "init_temperature",
    ):
        positive(f"model.{name}", getattr(m, name))
    for tower in ("vision", "text"):
        width, heads = getattr(m, f"{tower}_width"), getattr(m, f"{tower}_heads")
        if width % heads:
            raise ConfigError(
                f"model.{tower}_heads={heads} must divide model.{tower}_width={width}"
            )
    if m.image_size % m.patch_size:
        raise ConfigError(
            f"model.patch_size={m.patch_size} must divide model.image_size={m.image_size}"
        )
    if m.context_length < 3:
        raise ConfigError("model.context_length must be at least 3 (start, a token, end)")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    for name in ("epochs", "batch_size", "eval_batch_size", "lr", "grad_accum_steps"):
        positive(f"train.{name}", getattr(t, name))
    if t.batch_size < 2:
        raise ConfigError("train.batch_size must be at least 2 (contrastive loss needs negatives)")
    if not 0 <= t.warmup_fraction < 1:
        raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
    if t.weight_decay < 0 or t.grad_clip < 0:
        raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
    for name, value in (("val_size", d.val_size), ("test_size", d.test_size)):
        if value is not None and value <= 0:
            raise ConfigError(f"data.{name} must be positive (images, or a fraction < 1)")
    for name in ("max_samples", "max_eval_samples"):
        value = getattr(d, name)
        if value is not None and value < 2:
            raise ConfigError(f"data.{name} must be at least 2, got {value}")
    if d.num_workers != "auto" and not (isinstance(d.num_workers, int) and d.num_workers >= 0):
        raise ConfigError(f"data.num_workers must be auto or an integer >= 0, got {d.num_workers!r}")
    if d.epoch_samples is not None and d.epoch_samples < 2:
        raise ConfigError(f"data.epoch_samples must be at least 2, got {d.epoch_samples}")
    if d.shuffle_buffer < 1:
        raise ConfigError(f"data.shuffle_buffer must be at least 1, got {d.shuffle_buffer}")
    if t.checkpoint_every_steps < 0:
        raise ConfigError("train.checkpoint_every_steps must be >= 0 (0: only at epoch ends)")
