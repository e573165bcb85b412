"""Feeding an epoch of training batches to the device: copy, augment and normalise there.

On a CUDA device the next batch is copied from page-locked memory on a side stream
while the current one trains, so the GPU never waits for a host-to-device copy; crop,
flip and normalisation then run as a few batched kernels on the GPU. On the CPU the
same batched operation runs in the training step's threads.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cliptune.data.augment import augment_images
from cliptune.data.loader import HostBatch, TrainLoader, normalize_images


def _finish(batch: HostBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch already on its device -> (normalised float32 images, augmented; tokens)."""
    if batch.boxes is None:
        return normalize_images(batch.images), batch.tokens
    return augment_images(batch.images, batch.boxes, batch.flips, normalize_images), batch.tokens


def _cuda_prefetched(batches: Iterator[HostBatch], device: torch.device) -> Iterator[HostBatch]:
    """`batches` on `device`, each copied on a side stream while the previous one is used."""
    copy_stream = torch.cuda.Stream(device)
    compute_stream = torch.cuda.current_stream(device)

    def send(batch: HostBatch | None) -> HostBatch | None:
        if batch is None:
            return None
        with torch.cuda.stream(copy_stream):
            return batch.to(device, non_blocking=True)

    upcoming = send(next(batches, None))
    while upcoming is not None:
        current = upcoming
        compute_stream.wait_stream(copy_stream)
        for tensor in current:
            if tensor is not None:  # allocated on the copy stream, used on the compute stream
                tensor.record_stream(compute_stream)
        upcoming = send(next(batches, None))
        yield current


def device_batches(loader: TrainLoader, device: torch.device | str
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches on `device`: `(images float32 normalised (B, 3, H, W), tokens int64
    (B, L))`, augmented as the loader was configured (identically on every device)."""
    device = torch.device(device)
    if device.type == "cuda":
        batches: Iterator[HostBatch] = _cuda_prefetched(iter(loader), device)
    else:
        batches = (batch.to(device) for batch in loader)
    for batch in batches:
        yield _finish(batch)
