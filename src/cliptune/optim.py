"""AdamW with CLIP's weight-decay exclusions, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from cliptune.config import TrainConfig


def is_decayed(name: str, parameter: nn.Parameter) -> bool:
    """Weight decay applies to matrices only: not to biases, norms, embeddings or logit_scale."""
    if parameter.ndim < 2:
        return False
    return "embedding" not in name and not name.endswith("logit_scale")


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over two parameter groups (decayed, not decayed), fused where torch supports it."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if is_decayed(name, parameter) else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = dict(lr=config.lr, betas=config.betas, eps=config.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except RuntimeError:  # fused needs every parameter on a supported device and dtype
        return torch.optim.AdamW(groups, **kwargs)


def warmup_cosine(total_steps: int, warmup_fraction: float, min_lr_ratio: float):
    """Multiplier of the base lr at each optimizer step: linear warmup, then cosine decay."""
    warmup = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer, total_steps: int, config: TrainConfig):
    """Per-step LambdaLR implementing `warmup_cosine`."""
    factor = warmup_cosine(total_steps, config.warmup_fraction, config.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
