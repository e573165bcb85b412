"""Batches for training and evaluation, straight from the uint8 image arrays.

Images stay uint8 until they reach the device (4x less copying than float32);
`normalize_images` turns them into CLIP-normalised float32 there. A training epoch is
fully determined by (seed, epoch): image order and caption choice come from one NumPy
generator per epoch, each batch's augmentation from one generator per batch, so a
batch is the same with or without worker processes, and the global random state of
torch and NumPy is never touched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cliptune.data.augment import CROP_SCALE, augment_batch
from cliptune.data.prepared import Split
from cliptune.errors import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([key % 2**63 for key in keys])


def _to_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) array -> uint8 (B, 3, H, W) tensor (a channels-last view, no copy)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float32 normalised with CLIP's mean and std."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def eval_batches(split: Split, batch_size: int) -> Iterator[torch.Tensor]:
    """The split's images in order, uint8 (B, 3, H, W), no augmentation; the last batch may be short."""
    for start in range(0, len(split), batch_size):
        yield _to_batch(np.asarray(split.images[start:start + batch_size]))


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
    """One epoch of training batches `(images uint8 (B, 3, H, W), tokens int64 (B, L))`.

    One random caption per image by default; `all_captions=True` gives every
    (image, caption) pair once. Every batch holds exactly `batch_size` different images.
    With `augment`: random resized crop (area fraction in `crop_scale`, by default 0.5-1;
    pass `PreparedData.crop_scale`) back to the same size, and a horizontal flip of half
    the images when `flip` (never for left/right captions); without it, the cached
    pixels as they are.
    """

    def __init__(self, split: Split, *, batch_size: int, seed: int, epoch: int, augment: bool,
                 flip: bool, all_captions: bool = False, num_workers: int = 0,
                 pin_memory: bool = False, crop_scale: tuple[float, float] = CROP_SCALE,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 2 <= batch_size <= len(split):
            raise DataError(
                f"batch size {batch_size} needs 2 to {len(split)} images (the {split.name} split "
                "has that many); change train.batch_size or the split sizes"
            )
        if batch_size % world_size:
            raise DataError(
                f"batch size {batch_size} (the global batch) must divide evenly over "
                f"{world_size} processes; change train.batch_size or --nproc_per_node"
            )
        # rank r trains rows r*B/W:(r+1)*B/W of every global batch (augmented as a whole)
        self.rank, self.world_size = rank, world_size
        self.split = split
        self.seed, self.epoch = seed, epoch
        self.augment, self.flip, self.crop_scale = augment, flip, crop_scale
        self.num_workers = num_workers
        self.pin_memory = pin_memory and torch.cuda.is_available()
        plan = _every_caption if all_captions else _one_caption_per_image
        self._batches = plan(split, _rng(seed, epoch), batch_size)

    def __len__(self) -> int:
        return len(self._batches)

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number `index` of the epoch."""
        captions = self._batches[index]
        images = self.split.caption_image[captions]
        order = np.argsort(images)  # sorted rows read the memmap front to back
        captions, images = captions[order], images[order]
        pixels = _to_batch(np.asarray(self.split.images[images]))
        if self.augment:
            pixels = augment_batch(pixels, _rng(self.seed, self.epoch, index), flip=self.flip,
                                   scale=self.crop_scale)
        # index_select: advanced indexing costs 100x more here (a parallel gather kernel)
        tokens = self.split.tokens.index_select(0, torch.from_numpy(captions))
        if self.world_size > 1:
            local = len(captions) // self.world_size
            rows = slice(self.rank * local, (self.rank + 1) * local)
            pixels, tokens = pixels[rows], tokens[rows]
        return pixels, tokens

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.num_workers > 0:
            yield from DataLoader(_Batches(self), batch_size=None, shuffle=False,
                                  num_workers=self.num_workers, pin_memory=self.pin_memory)
            return
        for index in range(len(self)):
            images, tokens = self.batch(index)
            if self.pin_memory:
                images, tokens = images.pin_memory(), tokens.pin_memory()
            yield images, tokens


class _Batches(Dataset):
    """A TrainLoader's batches as a map-style dataset, for worker processes."""

    def __init__(self, loader: TrainLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loader.batch(index)
