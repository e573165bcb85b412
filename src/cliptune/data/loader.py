"""Batches for training and evaluation, straight from the uint8 image cache to the device.

Images stay uint8 until they reach the device (4x less copying than float32); there
`normalize_images` (evaluation) or `augment_images` + `normalize_images` (training,
`device_batches`) turn them into CLIP-normalised float32. On a CUDA device the next
training batch is copied from page-locked memory on a side stream while the current one
trains, so the GPU never waits for a host-to-device copy; on the CPU the same batched
crop, flip and normalisation run in the training step's threads. A training epoch is fully
determined by (seed, epoch): image order and caption choice come from one NumPy
generator per epoch, each batch's crop boxes and flips from one generator per batch, so
a batch is the same with or without worker processes, on any device and for any number
of data-parallel ranks, and the global random state of torch and NumPy is never touched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cliptune.data.augment import CROP_RATIO, CROP_SCALE, augment_images, draw_augmentation
from cliptune.data.image_cache import empty_batch, read_images
from cliptune.data.preprocess import normalize_images
from cliptune.data.splits import Split
from cliptune.errors import DataError
from cliptune.runtime import usable_cores

MAX_AUTO_WORKERS = 4


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([key % 2**63 for key in keys])


def _to_batch(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> uint8 (B, 3, H, W) tensor (a channels-last view, no copy)."""
    return torch.as_tensor(images).permute(0, 3, 1, 2)


def eval_batches(split: Split, batch_size: int, rows: range | None = None,
                 pin_memory: bool = False) -> Iterator[torch.Tensor]:
    """The split's images (or those of `rows`, a step-1 range) in order, uint8 (B, 3, H, W),
    no augmentation; the last batch may be short. With `pin_memory` (CUDA) each batch is
    read straight into page-locked memory, so its copy to the GPU can be asynchronous."""
    rows = range(len(split)) if rows is None else rows
    for start in range(rows.start, rows.stop, batch_size):
        positions = np.arange(start, min(start + batch_size, rows.stop))
        pixels = empty_batch((len(positions), *split.images.shape[1:]), torch.uint8,
                             pin_memory=pin_memory)
        read_images(split.images, positions, pixels.numpy())
        yield _to_batch(pixels)


def default_num_workers(pin_memory: bool, world_size: int = 1) -> int:
    """`data.num_workers: auto`: no reader processes when training on the CPU (reading a batch
    is a few ms of copying; augmentation runs in the training step's own threads), else up to
    four per GPU process, leaving a core per process for the training loop."""
    if not pin_memory:
        return 0
    cores = usable_cores()
    return max(1, min(MAX_AUTO_WORKERS, cores // world_size - 1))


class HostBatch(NamedTuple):
    """One training batch (this rank's rows) as read on the host, before augmentation."""

    images: torch.Tensor  # uint8 (B, 3, H, W), channels-last memory
    tokens: torch.Tensor  # int64 (B, L)
    boxes: torch.Tensor | None  # int64 (B, 4) crop boxes (top, left, height, width); None: no augmentation
    flips: torch.Tensor | None  # bool (B,) images to mirror

    def to(self, device: torch.device, non_blocking: bool = False) -> HostBatch:
        """The same batch on `device`."""
        return HostBatch(*(None if t is None else t.to(device, non_blocking=non_blocking)
                           for t in self))


class EpochLoader(Protocol):
    """A training epoch's batches as the Trainer uses them, whichever the source:
    `TrainLoader` (the image cache) or `shard_loader.ShardLoader` (webdataset shards)."""

    def __len__(self) -> int: ...  # batches in the whole epoch

    def __iter__(self) -> Iterator[HostBatch]: ...

    def position(self, batches_done: int) -> list[list[int]] | None:
        """What a run resumed after `batches_done` batches needs beyond that count (None:
        nothing, the epoch is a function of seed and epoch)."""

    def skipped(self) -> tuple[int, int] | None:
        """(samples skipped for a broken image, for a missing caption) this epoch so far;
        None when the loader never skips a sample."""

    def close(self) -> None:
        """End the loader's reader processes."""


def _one_caption_per_image(split: Split, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
    """Batches of caption indices: every image once, with one of its captions drawn at random."""
    counts = np.bincount(split.caption_image, minlength=len(split))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    order = np.argsort(split.caption_image, kind="stable")  # captions grouped by image
    images = rng.permutation(len(split))
    picks = order[starts[images] + np.floor(rng.random(len(images)) * counts[images]).astype(np.int64)]
    n_batches = len(images) // batch_size
    return [picks[b * batch_size:(b + 1) * batch_size] for b in range(n_batches)]


def _every_caption(split: Split, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
    """Batches of caption indices: every (image, caption) pair once, no image twice in a batch.

    Pairs are dealt in rounds (round r holds each image's r-th caption, in a random
    order of captions and of images), so consecutive pairs belong to different images.
    A pair whose image is already in the batch waits for the next batch; only the final,
    incomplete batch is dropped.
    """
    shuffled = rng.permutation(len(split.caption_image))
    images = split.caption_image[shuffled]
    grouped = np.argsort(images, kind="stable")
    first = np.searchsorted(images[grouped], images[grouped])  # start of each image's group
    rounds = np.empty(len(shuffled), dtype=np.int64)
    rounds[grouped] = np.arange(len(shuffled)) - first
    dealt = shuffled[np.lexsort((rng.random(len(shuffled)), rounds))]
    pending = deque(dealt.tolist())
    batches: list[np.ndarray] = []
    batch: list[int] = []
    in_batch: set[int] = set()
    deferred: list[int] = []
    while pending:
        caption = pending.popleft()
        image = int(split.caption_image[caption])
        if image in in_batch:
            deferred.append(caption)
        else:
            batch.append(caption)
            in_batch.add(image)
        if len(batch) == batch_size:
            batches.append(np.array(batch, dtype=np.int64))
            batch, in_batch = [], set()
            pending.extendleft(reversed(deferred))
            deferred = []
    return batches


class TrainLoader:
    """One epoch of training batches, as `HostBatch`es (uint8 images, tokens, crop boxes and
    flips); `device_batches(loader, device)` turns them into augmented float32 on the device.

    One random caption per image by default; `all_captions=True` gives every
    (image, caption) pair once. Every batch holds exactly `batch_size` different images.
    With `augment`: random resized crop (area fraction in `crop_scale`, by default 0.5-1;
    pass `data.crop_scale` or `PreparedData.crop_scale`, aspect ratio in `crop_ratio`)
    back to the same size, and a horizontal flip of half
    the images when `flip` (never for left/right captions); without it, the cached
    pixels as they are.

    Data parallel: `batch_size` is the global batch; rank `rank` of `world_size` gets rows
    `rank * B / W` to `(rank + 1) * B / W` of every global batch, crop boxes and flips
    included, so the ranks' batches put together are the single-process batch.
    `num_workers`: reader processes, or "auto" (`default_num_workers`). `pin_memory`:
    batches are read into page-locked memory, for fast asynchronous copies to a GPU.

    One loader serves a whole run: `set_epoch(e)` makes it epoch `e` (the batches are then
    those of `TrainLoader(..., epoch=e)`). The reader processes persist across epochs
    (started on the first iteration, ended by `close`): they get each batch as
    (epoch, index) from a sampler in this process and plan an epoch's batches themselves.
    `set_epoch(e, start=k)` begins the epoch at batch `k` (a run resumed mid-epoch); `len`
    is always the whole epoch's.
    """

    def __init__(self, split: Split, *, batch_size: int, seed: int, epoch: int, augment: bool,
                 flip: bool, all_captions: bool = False, num_workers: int | str = 0,
                 pin_memory: bool = False, crop_scale: tuple[float, float] = CROP_SCALE,
                 crop_ratio: tuple[float, float] = CROP_RATIO,
                 rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if not 2 <= batch_size <= len(split):
            raise DataError(
                f"batch size {batch_size} needs 2 to {len(split)} images (the {split.name} split "
                "has that many); change train.batch_size or the split sizes"
            )
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise DataError(
                f"train.batch_size={batch_size} (the global batch) must divide evenly among "
                f"{world_size} processes (rank {rank}); choose a multiple of {world_size}"
            )
        self.split = split
        self.seed, self.epoch = seed, epoch
        self.augment, self.flip = augment, flip
        self.crop_scale, self.crop_ratio = crop_scale, crop_ratio
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.num_workers = (default_num_workers(self.pin_memory, world_size)
                            if num_workers == "auto" else int(num_workers))
        self.batch_size, self.all_captions = batch_size, all_captions
        self._readers: DataLoader | None = None
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make this the loader of epoch `epoch` (its order, captions and augmentation),
        iterated from batch `start` on."""
        plan = _every_caption if self.all_captions else _one_caption_per_image
        self.epoch, self.start = epoch, start
        self._batches = plan(self.split, _rng(self.seed, epoch), self.batch_size)

    def close(self) -> None:
        """End the reader processes (a later iteration starts new ones)."""
        self._readers = None  # the DataLoader's iterator shuts its workers down when freed

    def position(self, batches_done: int) -> None:
        """Nothing beyond `batches_done`: the epoch's batches follow from (seed, epoch)."""

    def skipped(self) -> None:
        """None: every cached image was checked when the cache was built."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_readers": None}  # what a reader process gets

    def __len__(self) -> int:
        return len(self._batches)

    def batch(self, index: int) -> HostBatch:
        """Batch number `index` of the epoch (this rank's rows of it)."""
        captions = self._batches[index]
        images = self.split.caption_image[captions]
        order = np.argsort(images)  # sorted rows read the cache front to back
        captions, images = captions[order], images[order]
        boxes = flips = None
        size = len(captions)
        if self.augment:  # drawn for the global batch, then sliced: the same on every rank
            _, height, width, _ = self.split.images.shape
            boxes, flips = draw_augmentation(_rng(self.seed, self.epoch, index), size, height,
                                             width, flip=self.flip, scale=self.crop_scale,
                                             ratio=self.crop_ratio)
        mine = slice(self.rank * size // self.world_size, (self.rank + 1) * size // self.world_size)
        captions, images = captions[mine], images[mine]
        pinned = self.pin_memory and self.num_workers == 0  # else DataLoader pins
        # Read straight into the (page-locked) tensor that goes to the device: the caching
        # host allocator then keeps it alive until an asynchronous copy from it has finished.
        pixels = empty_batch((len(images), *self.split.images.shape[1:]), torch.uint8,
                             pin_memory=pinned)
        read_images(self.split.images, images, pixels.numpy())
        pixels = _to_batch(pixels)
        # index_select: advanced indexing costs 100x more here (a parallel gather kernel)
        tokens = self.split.tokens.index_select(0, torch.from_numpy(captions))
        if boxes is not None:
            boxes, flips = boxes[mine], flips[mine]
        if pinned:
            tokens = tokens.pin_memory()
            boxes, flips = (None, None) if boxes is None else (boxes.pin_memory(), flips.pin_memory())
        return HostBatch(pixels, tokens, boxes, flips)

    def __iter__(self) -> Iterator[HostBatch]:
        if self.num_workers > 0:
            if self._readers is None:
                self._readers = DataLoader(
                    _Batches(self), batch_size=None, sampler=_EpochIndices(self),
                    num_workers=self.num_workers, pin_memory=self.pin_memory,
                    persistent_workers=True,
                    # its own generator: starting the workers draws their base seed, which
                    # from the global one would shift the dropout of the epoch they start in
                    generator=torch.Generator().manual_seed(self.seed),
                )
            yield from self._readers
            return
        for index in range(self.start, len(self)):
            yield self.batch(index)


class _EpochIndices(Sampler):
    """(epoch, index) of the loader's current epoch's batches from its start on, in order."""

    def __init__(self, loader: TrainLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader) - self.loader.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.loader.epoch, self.loader.start
        return iter([(epoch, index) for index in range(start, len(self.loader))])


class _Batches(Dataset):
    """A TrainLoader's batches as a map-style dataset keyed by (epoch, index), for reader
    processes: each keeps its own copy of the loader and moves it to the asked epoch."""

    def __init__(self, loader: TrainLoader) -> None:
        self.loader = loader

    def __getitem__(self, key: tuple[int, int]) -> HostBatch:
        epoch, index = key
        if self.loader.epoch != epoch:
            self.loader.set_epoch(epoch)
        return self.loader.batch(index)


# ------------------------------------------------------------- to the device


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


def device_batches(loader: EpochLoader, device: torch.device | str
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
