"""Feeding an epoch of training batches to the device."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cliptune.data.loader import TrainLoader, normalize_images


def device_batches(loader: TrainLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches on `device`: `(images float32 normalised (B, 3, H, W), tokens (B, L))`,
    augmented as the loader was configured."""
    for images, tokens in loader:
        yield (normalize_images(images.to(device, non_blocking=True)),
               tokens.to(device, non_blocking=True))
