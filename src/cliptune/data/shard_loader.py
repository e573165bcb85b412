"""`ShardLoader`: training epochs streamed from webdataset shards (data too big to cache).

An epoch is `data.epoch_samples` samples, as `epoch_samples // batch_size` global
batches. Its order is a function of (seed, epoch, ranks, workers): the shard list is
shuffled by `(seed, epoch)`, split over the ranks (`webdataset.split_by_node`) and each
rank's DataLoader workers (`split_by_worker`); each worker reads its shards (re-shuffled
and read again if the epoch needs more samples than they hold), shuffles samples in a
seeded buffer, decodes, and builds the global batches `k` with `k % workers == worker`,
which the DataLoader hands out in order. With `data.resampled` shards are drawn with
replacement instead (`ResampledShards`). Each batch records how many samples its worker
had taken from its stream, so a checkpoint written mid-epoch holds a position (batches
done + each worker's count) and a resumed run skips exactly those samples, undecoded, and
goes on as if never stopped.

Broken samples (no image, an image that cannot be decoded, no caption) are skipped and
counted; the epoch still has its full batches. A shard that cannot be read stops the run
with an error that names it.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import webdataset as wds

from cliptune.data.augment import CROP_RATIO, CROP_SCALE, draw_augmentation
from cliptune.data.loader import HostBatch
from cliptune.data.preprocess import DECODE_ERRORS, decode_image, decode_jpegs_cuda
from cliptune.data.shard_samples import (
    TrackedShards,
    captions_of,
    image_entry,
    shard_error,
    shard_of,
    short_shards,
)
from cliptune.data.shards import ShardSplit
from cliptune.errors import ConfigError, DataError
from cliptune.runtime import usable_cores
from cliptune.tokenizer import Tokenizer

MAX_AUTO_WORKERS = 16


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([key % 2**63 for key in keys])


def _seed(*keys: int) -> int:
    """A Python-int seed from integer keys (for webdataset's `random.Random` shuffles)."""
    return int(_rng(*keys).integers(2**62))


def default_workers(world_size: int, n_shards: int, resampled: bool) -> int:
    """`data.num_workers: auto` for shards: decoding is the work, so one reader process per
    core this rank can use, less one for the training loop (at least one, at most 16), and
    no more than the shards each rank gets (each worker needs a shard of its own)."""
    cores = usable_cores()
    workers = max(1, min(MAX_AUTO_WORKERS, cores // world_size - 1))
    return workers if resampled else max(1, min(workers, n_shards // world_size))


def resolve_decode_device(setting: str, device: torch.device) -> str:
    """`data.decode_device`: auto decodes on the CPU workers (the recipe of
    data/preprocess.py, exactly the image cache's pixels); cuda (only when training on a
    CUDA device) decodes JPEGs on the GPU with batched nvJPEG."""
    if setting == "cuda" and device.type != "cuda":
        raise ConfigError(f"data.decode_device=cuda needs a CUDA training device (train.device "
                          f"is {device}); use data.decode_device=cpu")
    return "cuda" if setting == "cuda" else "cpu"


def _is_whole_jpeg(data: bytes) -> bool:
    """A cheap check before a GPU decode: JPEG start marker, and an end marker at the end."""
    return data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


class _WorkerBatch(NamedTuple):
    """What a worker sends: global batch `index`, its worker, the worker's counters after it
    (samples taken from its stream, skipped for the image, skipped for the caption)."""

    index: int
    worker: int
    counters: tuple[int, int, int]
    batch: HostBatch
    encoded: list[tuple[int, torch.Tensor]]  # (row, JPEG bytes) left for the GPU decoder


class _Failure(NamedTuple):
    message: str


@dataclass
class _Stream(torch.utils.data.IterableDataset):
    """The samples of one epoch, decoded and batched in each DataLoader worker."""

    urls: list[str]
    tokenizer_json: str
    n_batches: int
    batch_size: int  # global
    image_size: int
    seed: int
    epoch: int
    rank: int
    world_size: int
    augment: bool
    flip: bool
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    caption_field: str
    shuffle_buffer: int
    resampled: bool
    decode_device: str
    start: int  # global batches already done
    expected: dict[str, int] = field(default_factory=dict)  # samples per shard (manifest)
    start_counters: list[tuple[int, int, int]] = field(default_factory=list)  # per worker

    def _samples(self, worker: int, errors: list[str]) -> Iterator[dict[str, Any]]:
        """This worker's raw samples, shuffled (the epoch's stream, read again as needed)."""
        def handler(exn: BaseException) -> bool:
            if not errors:  # the first is the cause; webdataset reports it again on its way out
                errors.append(shard_error(shard_of(exn, self.urls, source.current), exn))
            return False

        shuffle_seed = _seed(self.seed, self.epoch, self.rank, worker)
        if self.resampled:
            source = TrackedShards([])
            shards = wds.ResampledShards(self.urls, seed=_seed(self.seed, self.epoch),
                                         deterministic=True)
            pipeline = wds.DataPipeline(shards, _track(source),
                                        wds.tarfile_to_samples(handler=handler),
                                        wds.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                                                    seed=shuffle_seed))
            yield from pipeline
            return
        listed = wds.SimpleShardList(self.urls, seed=_seed(self.seed, self.epoch))
        mine = [s["url"] for s in wds.split_by_worker(wds.split_by_node(iter(listed)))]
        for cycle in itertools.count():
            order = list(mine)
            if cycle:  # a later pass over the same shards, in another order
                np.random.default_rng(_seed(shuffle_seed, cycle)).shuffle(order)
            source = TrackedShards(order)
            pipeline = wds.DataPipeline(lambda src=source: iter(src),
                                        wds.tarfile_to_samples(handler=handler),
                                        wds.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                                                    seed=_seed(shuffle_seed, cycle)))
            counts = dict.fromkeys(order, 0)
            for sample in pipeline:
                counts[sample["__url__"]] += 1
                yield sample
            short = short_shards(counts, self.expected)
            if short and not errors:
                errors.append(short)
            if not any(counts.values()) or errors:
                return

    def _decode(self, sample: dict[str, Any], pixels: np.ndarray, row: int,
                encoded: list[tuple[int, torch.Tensor]]) -> tuple[str | None, str | None]:
        """Decode a sample's image into `pixels[row]` (or queue it for the GPU) and draw its
        caption; returns (caption, None) or (None, why it is skipped)."""
        captions = captions_of(sample, self.caption_field)
        if not captions:
            return None, "caption"
        image = image_entry(sample)
        if image is None:
            return None, "image"
        if self.decode_device == "cuda" and image[0] in ("jpg", "jpeg") and _is_whole_jpeg(image[1]):
            encoded.append((row, torch.frombuffer(bytearray(image[1]), dtype=torch.uint8)))
        else:
            try:
                pixels[row] = decode_image(image[1], self.image_size)
            except DECODE_ERRORS:
                return None, "image"
        pick = 0
        if len(captions) > 1:  # keyed by the sample: the same choice wherever it is read
            key = zlib.crc32(str(sample.get("__key__")).encode())
            pick = int(_rng(self.seed, self.epoch, key).integers(len(captions)))
        return captions[pick], None

    def __iter__(self) -> Iterator[_WorkerBatch | _Failure]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if (rank, world) != (self.rank, self.world_size):
            yield _Failure(f"webdataset sees rank {rank} of {world} but the loader was built "
                           f"for rank {self.rank} of {self.world_size}")
            return
        tokenizer = Tokenizer.from_json(self.tokenizer_json)
        errors: list[str] = []
        stream = self._samples(worker, errors)
        raw, bad_image, bad_caption = (self.start_counters[worker] if self.start_counters
                                       else (0, 0, 0))
        for _ in range(raw):  # the samples the checkpointed run had taken: skipped undecoded
            if next(stream, None) is None:
                yield _Failure(errors[0] if errors else "the shards ended while skipping "
                               "to the resume position")
                return
        local = self.batch_size // self.world_size
        size = self.image_size
        first = self.start + (worker - self.start) % workers
        for index in range(first, self.n_batches, workers):
            pixels = np.zeros((local, size, size, 3), dtype=np.uint8)
            captions: list[str] = []
            encoded: list[tuple[int, torch.Tensor]] = []
            while len(captions) < local:
                sample = next(stream, None)
                if errors or sample is None:
                    yield _Failure(errors[0] if errors else
                                   f"the training shards hold no usable sample for worker "
                                   f"{worker} of rank {rank}")
                    return
                raw += 1
                caption, why = self._decode(sample, pixels, len(captions), encoded)
                if why == "image":
                    bad_image += 1
                elif why == "caption":
                    bad_caption += 1
                else:
                    captions.append(caption)
            boxes = flips = None
            if self.augment:  # drawn for the global batch, then sliced: as TrainLoader does
                boxes, flips = draw_augmentation(_rng(self.seed, self.epoch, index),
                                                 self.batch_size, size, size, flip=self.flip,
                                                 scale=self.crop_scale, ratio=self.crop_ratio)
                mine = slice(self.rank * local, (self.rank + 1) * local)
                boxes, flips = boxes[mine], flips[mine]
            images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            batch = HostBatch(images, tokenizer.encode(captions), boxes, flips)
            yield _WorkerBatch(index, worker, (raw, bad_image, bad_caption), batch, encoded)


def _track(source: TrackedShards):
    """A pipeline stage that records the shard passing through (resampled streams)."""
    def stage(shards: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
        for shard in shards:
            source.current = shard["url"]
            yield shard
    return stage


class ShardLoader:
    """One epoch of training batches streamed from shards, as `HostBatch`es (uint8 images,
    tokens, crop boxes and flips), for `device_batches` like `TrainLoader`'s.

    `start` (batches done) and `start_counters` (each worker's counters at that point, from
    `position`) resume an epoch mid-way. The split's `shard_samples` (from the manifest)
    let a shard cut short between two members be noticed at the end of a pass over it. `skipped()` counts the broken samples passed over.
    """

    def __init__(self, split: ShardSplit, *, tokenizer: Tokenizer, image_size: int,
                 batch_size: int, seed: int, epoch: int, augment: bool, flip: bool,
                 crop_scale: tuple[float, float] = CROP_SCALE,
                 crop_ratio: tuple[float, float] = CROP_RATIO, shuffle_buffer: int = 1000,
                 resampled: bool = False, num_workers: int | str = "auto",
                 pin_memory: bool = False, decode_device: str = "cpu",
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 start: int = 0, start_counters: list[list[int]] | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
            raise DataError(
                f"train.batch_size={batch_size} (the global batch) must divide evenly among "
                f"{world_size} processes (rank {rank}); choose a multiple of {world_size}")
        n_batches = split.epoch_samples // batch_size
        if batch_size < 2 or n_batches < 1:
            raise DataError(f"data.epoch_samples={split.epoch_samples} holds no batch of "
                            f"train.batch_size={batch_size}; raise epoch_samples")
        workers = (default_workers(world_size, len(split.urls), resampled)
                   if num_workers == "auto" else int(num_workers))
        if not resampled and len(split.urls) < world_size * max(1, workers):
            raise DataError(
                f"{len(split.urls)} training shards cannot be split over {world_size} "
                f"process(es) x {max(1, workers)} data worker(s): lower data.num_workers, write "
                "more, smaller shards (make_shards --shard-size), or set data.resampled=true")
        if start_counters is not None and len(start_counters) != max(1, workers):
            raise ConfigError(
                f"the checkpoint's epoch position was written with {len(start_counters)} data "
                f"workers per process; resume with --set data.num_workers={len(start_counters)}")
        self.split, self.num_workers, self.n_batches = split, workers, n_batches
        self.pin_memory = pin_memory and torch.cuda.is_available() and decode_device == "cpu"
        self.device, self.decode_device = torch.device(device), decode_device
        self.start = start
        counters = [tuple(c) for c in start_counters] if start_counters else [(0, 0, 0)] * max(1, workers)
        self._start_counters = counters
        self._seen: dict[int, tuple[int, tuple[int, int, int]]] = {}
        self._stream = _Stream(
            split.urls, tokenizer.to_json(), n_batches, batch_size, image_size, seed, epoch,
            rank, world_size, augment, flip, tuple(crop_scale), tuple(crop_ratio),
            split.caption_field,
            shuffle_buffer, resampled, decode_device, start, dict(split.shard_samples), counters)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[HostBatch]:
        # An own generator: the DataLoader never draws from the global torch RNG (a resumed
        # run would otherwise consume one draw more than the run it continues).
        loader = wds.WebLoader(self._stream, batch_size=None, num_workers=self.num_workers,
                               pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(0))
        # The DataLoader asks worker 0 first; a resumed epoch may start on another worker's
        # batch, so batches are handed on in index order (at most `workers` held back).
        expected, pending = self.start, {}
        for item in loader:
            if isinstance(item, _Failure):
                raise DataError(item.message)
            pending[item.index] = item
            while expected in pending:
                yield self._finish(pending.pop(expected))
                expected += 1
        if pending or expected != self.n_batches:
            raise RuntimeError(f"shard stream ended at batch {expected} of {self.n_batches}")

    def _finish(self, item: _WorkerBatch) -> HostBatch:
        self._seen[item.index] = (item.worker, item.counters)
        batch = item.batch
        if item.encoded:
            rows = [row for row, _ in item.encoded]
            images = batch.images.to(self.device)
            images[rows] = self._gpu_decode(item, images.shape[-1])
            batch = batch._replace(images=images)
        return batch

    def _gpu_decode(self, item: _WorkerBatch, size: int) -> torch.Tensor:
        data = [tensor for _, tensor in item.encoded]
        try:
            return decode_jpegs_cuda(data, size, self.device)
        except RuntimeError:  # nvJPEG refused one: the CPU recipe for this batch's JPEGs
            try:
                cpu = [decode_image(t.numpy().tobytes(), size) for t in data]
            except DECODE_ERRORS as err:
                raise DataError(f"a training image in batch {item.index} passed the JPEG check "
                                f"but cannot be decoded ({err}); use data.decode_device=cpu, "
                                "which skips such samples") from err
            return torch.from_numpy(np.stack(cpu)).permute(0, 3, 1, 2).to(self.device)

    def position(self, batches_done: int) -> list[list[int]]:
        """Each worker's counters (samples taken, skipped for the image, for the caption)
        after the first `batches_done` batches of the epoch: what a resumed run starts from."""
        counters = [list(c) for c in self._start_counters]
        for index in range(self.start, batches_done):
            worker, values = self._seen[index]
            counters[worker] = list(values)
        return counters

    def close(self) -> None:
        """Nothing to end: an epoch's stream and its workers end with the epoch."""

    def skipped(self) -> tuple[int, int]:
        """(samples skipped for a broken or missing image, for a missing caption) this epoch,
        up to the last batch handed out."""
        counters = self.position(max(self._seen, default=self.start - 1) + 1)
        return sum(c[1] for c in counters), sum(c[2] for c in counters)
