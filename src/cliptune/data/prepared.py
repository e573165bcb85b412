"""PreparedData and how it is made: `prepare_data` goes from a `DataConfig` to tokenized
train/val/test splits of cached images (catalog -> image cache -> splits -> tokenizer).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from cliptune.config import DataConfig, RunConfig
from cliptune.data import shard_samples, shards
from cliptune.data.augment import CROP_SCALE
from cliptune.data.catalog import Catalog
from cliptune.data.image_cache import ImageRows, default_cache_dir, load_or_build
from cliptune.data.loader import EpochLoader, TrainLoader
from cliptune.data.shard_loader import ShardLoader, resolve_decode_device
from cliptune.data.shards import ShardSplit
from cliptune.data.sources import load_catalog
from cliptune.data.splits import SPLIT_NAMES, Split, cap_and_sort, uncapped_splits
from cliptune.errors import ConfigError, DataError
from cliptune.tokenizer import Tokenizer


@dataclass
class PreparedData:
    """A dataset ready for training: three splits, the tokenizer, and where it came from."""

    source: str  # "shapes" | "flickr30k" | "folder" | "webdataset": the dataset actually used
    root: str  # folder the images came from (webdataset: the training shard pattern)
    flip_safe: bool  # False when captions speak of left and right (Shapes)
    train: Split | ShardSplit  # ShardSplit: streamed from shards (data/shard_loader.py)
    val: Split
    test: Split
    tokenizer: Tokenizer
    image_size: int
    # Area fraction kept by training crops (TrainLoader's crop_scale): narrower when
    # captions state positions and sizes, which strong crops would falsify (Shapes).
    crop_scale: tuple[float, float] = CROP_SCALE
    # Images per split before max_samples / max_eval_samples: what a run of the same data
    # without those caps trains and validates on (an HPO study projects its time from it).
    uncapped_sizes: dict[str, int] = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of what training and evaluation see: the source, the image size,
        each split's image names, captions and caption->image map, and the image cache's
        content key (its file name hashes every image's bytes). Machine-independent: two
        processes or machines that prepared the same data agree, any other data differs."""
        digest = hashlib.sha256(json.dumps([self.source, self.image_size]).encode())
        for split in (self.train, self.val, self.test):
            if isinstance(split, ShardSplit):
                digest.update(json.dumps([split.name, split.urls, split.epoch_samples,
                                          split.caption_field]).encode())
                continue
            digest.update(json.dumps([split.name, split.image_names, split.captions]).encode())
            digest.update(np.ascontiguousarray(split.caption_image, dtype=np.int64).tobytes())
            if isinstance(split.images, ImageRows):
                digest.update(split.images.path.name.encode())
        return digest.hexdigest()[:16]

    def train_loader(self, config: RunConfig, *, epoch: int, batch_size: int,
                     device: torch.device, rank: int = 0, world_size: int = 1,
                     position: dict | None = None,
                     loader: EpochLoader | None = None) -> EpochLoader:
        """The training batches of epoch `epoch` (`batch_size` global, this rank's rows),
        from `position` (a checkpoint's `state.position`) on when resuming mid-epoch. From
        the image cache: `loader`, the run's one TrainLoader, moved on with `set_epoch`
        (its reader processes persist across epochs), or a new one; from shards: a new
        stream per epoch."""
        start = position["batches"] if position else 0
        data = config.data
        if isinstance(self.train, ShardSplit):
            workers, counters = data.num_workers, None
            if position and position.get("shards") is not None:
                saved = position["shards"]
                if len(saved) != world_size:
                    raise ConfigError(
                        f"cannot resume run {config.name!r} mid-epoch on {world_size} "
                        f"process(es): its epoch position was written by {len(saved)}; "
                        f"resume with torchrun --nproc_per_node {len(saved)}")
                counters = saved[rank]
                if workers == "auto":  # the worker count the position was written with
                    workers = len(counters)
            return ShardLoader(
                self.train, tokenizer=self.tokenizer, image_size=self.image_size,
                batch_size=batch_size, seed=config.seed, epoch=epoch, augment=data.augment,
                flip=self.flip_safe, crop_scale=data.crop_scale or self.crop_scale,
                crop_ratio=data.crop_ratio,
                shuffle_buffer=data.shuffle_buffer, resampled=data.resampled,
                num_workers=workers, pin_memory=device.type == "cuda",
                decode_device=resolve_decode_device(data.decode_device, device),
                device=device, rank=rank, world_size=world_size, start=start,
                start_counters=counters,
            )
        if loader is not None:
            loader.set_epoch(epoch, start)
            return loader
        return TrainLoader(
            self.train, batch_size=batch_size, seed=config.seed, epoch=epoch,
            augment=data.augment, flip=self.flip_safe, all_captions=config.train.all_captions,
            num_workers=data.num_workers, pin_memory=device.type == "cuda",
            crop_scale=data.crop_scale or self.crop_scale, crop_ratio=data.crop_ratio,
            rank=rank, world_size=world_size, start=start,
        )

    def split(self, name: str) -> Split | ShardSplit:
        """The split called `name` (train, val or test)."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, name)


def _make_split(name: str, catalog: Catalog, indices: np.ndarray, cache_rows: np.ndarray,
                images: ImageRows, tokenizer: Tokenizer) -> Split:
    part = catalog.subset(indices)
    return Split(
        name=name,
        image_names=part.image_names,
        images=images.subset(cache_rows[indices]),  # a view: no pixels are read here
        captions=part.captions,
        caption_image=part.caption_image,
        tokens=tokenizer.encode(part.captions),
    )


def prepare_data(config: DataConfig, *, image_size: int, vocab_size: int, context_length: int,
                 tokenizer: Tokenizer | None = None, quiet: bool = False) -> PreparedData:
    """Resolve the source, read captions, build or reuse the image cache, split by image
    (from `config.split_seed` or `config.split_file`), train the tokenizer on the train
    captions (unless `tokenizer` is given), tokenize every split, and print a one-line
    summary (unless `quiet`). Splits are views of the image cache: no pixels are loaded.

    Images that are missing or unreadable are skipped with a warning before splitting.
    Raises `DataError` for input that cannot be used.
    """
    if tokenizer is not None and tokenizer.context_length != context_length:
        raise ConfigError(
            f"the tokenizer pads to {tokenizer.context_length} tokens but "
            f"model.context_length={context_length}"
        )
    cache_dir = default_cache_dir(config.cache_dir)
    if config.source == "webdataset" or (config.source == "auto"
                                         and shards.looks_like_shards(config.data_dir)):
        return _prepare_shards(config, cache_dir, image_size, vocab_size, context_length,
                               tokenizer, quiet)
    catalog = load_catalog(config, cache_dir, quiet=quiet)
    cache = load_or_build(catalog.root, catalog.image_names, image_size, cache_dir,
                          slot=catalog.source)
    cache_rows = np.flatnonzero(cache.valid)
    if len(cache_rows) < len(catalog):
        catalog = catalog.subset(cache_rows)
    uncapped = uncapped_splits(catalog.image_names, config, source=catalog.source)
    indices = cap_and_sort(uncapped, config.max_samples, config.max_eval_samples)
    if tokenizer is None:
        train_captions = catalog.subset(indices["train"]).captions
        tokenizer = Tokenizer.train(train_captions, vocab_size, context_length)
    images = ImageRows(cache.path)
    splits = {name: _make_split(name, catalog, indices[name], cache_rows, images, tokenizer)
              for name in SPLIT_NAMES}
    data = PreparedData(source=catalog.source, root=str(catalog.root),
                        flip_safe=catalog.flip_safe, tokenizer=tokenizer,
                        image_size=image_size, crop_scale=catalog.crop_scale,
                        uncapped_sizes={name: len(uncapped[name]) for name in SPLIT_NAMES},
                        **splits)
    if not quiet:
        print(summary(data, reused=cache.reused), flush=True)
    return data


def _prepare_shards(config: DataConfig, cache_dir, image_size: int, vocab_size: int,
                    context_length: int, tokenizer: Tokenizer | None, quiet: bool) -> PreparedData:
    """`prepare_data` for webdataset shards: training streams from its shards (a
    `ShardSplit`); validation and test are written out and decoded into the image cache,
    then split like any dataset; the tokenizer learns from the first training captions."""
    plan = shards.resolve(config)
    catalog = shard_samples.eval_catalog(plan, cache_dir)
    cache = load_or_build(catalog.root, catalog.image_names, image_size, cache_dir,
                          slot="webdataset")
    cache_rows = np.flatnonzero(cache.valid)
    if len(cache_rows) < len(catalog):
        catalog = catalog.subset(cache_rows)
    if tokenizer is None:
        tokenizer = Tokenizer.train(shard_samples.train_captions(plan.train), vocab_size, context_length)
    images = ImageRows(cache.path)
    splits = {}
    for name in ("val", "test"):
        indices = np.array([i for i, n in enumerate(catalog.image_names)
                            if n.startswith(f"{name}/")], dtype=np.int64)
        indices = indices[:config.max_eval_samples]  # the first images by key (None: all)
        if len(indices) < 2:
            raise DataError(f"the {name} shards hold {len(indices)} usable images; "
                            "evaluation needs at least 2")
        splits[name] = _make_split(name, catalog, indices, cache_rows, images, tokenizer)
    data = PreparedData(source="webdataset", root=plan.root, flip_safe=plan.flip_safe,
                        train=plan.train, tokenizer=tokenizer, image_size=image_size,
                        crop_scale=plan.crop_scale, **splits)
    if not quiet:
        print(summary(data, reused=cache.reused), flush=True)
    return data


def summary(data: PreparedData, *, reused: bool) -> str:
    """One line: source, images, captions, split sizes, image cache."""
    if isinstance(data.train, ShardSplit):
        evals = " / ".join(f"{s.name} {len(s)} images ({len(s.captions)} captions)"
                           for s in (data.val, data.test))
        return (f"data: webdataset ({data.root}): train {len(data.train.urls)} shards, "
                f"{data.train.epoch_samples} samples per epoch; {evals}; "
                f"{data.image_size}px image cache {'reused' if reused else 'built'}")
    splits = [data.train, data.val, data.test]
    images = sum(len(s) for s in splits)
    captions = sum(len(s.captions) for s in splits)
    sizes = " / ".join(f"{s.name} {len(s)}" for s in splits)
    return (f"data: {data.source} ({data.root}): {images} images, {captions} captions; "
            f"split {sizes} images; {data.image_size}px image cache "
            f"{'reused' if reused else 'built'}")
