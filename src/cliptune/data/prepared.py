"""What `prepare_data` hands to training and evaluation: splits of images, captions, tokens."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from cliptune.data.augment import CROP_SCALE
from cliptune.data.image_rows import ImageRows
from cliptune.errors import DataError
from cliptune.tokenizer import Tokenizer


@dataclass
class Split:
    """The images of one split (uint8, aligned with `image_names`) and all their captions.

    `images` is normally an `ImageRows` view of the shared image cache (pixels are read
    when indexed: `images[index_array]` gives a uint8 (n, H, W, 3) array); a plain array
    works too.
    """

    name: str  # "train" | "val" | "test"
    image_names: list[str]  # relative to PreparedData.root
    images: ImageRows | np.ndarray  # uint8 (N, H, W, 3)
    captions: list[str]
    caption_image: np.ndarray  # int64 (M,): index into images of each caption
    tokens: torch.Tensor  # int64 (M, context_length)

    def __len__(self) -> int:
        return len(self.image_names)

    def first_caption_index(self) -> np.ndarray:
        """int64 (N,): the index of each image's first caption."""
        images, first = np.unique(self.caption_image, return_index=True)
        if len(images) != len(self):
            raise ValueError(f"{self.name} split: some images have no caption")
        return first.astype(np.int64)


@dataclass
class ShardSplit:
    """The training split as webdataset shards (data/shards.py streams it): an epoch is
    `epoch_samples` samples, which is also its length."""

    name: str
    pattern: str
    urls: list[str]
    epoch_samples: int
    caption_field: str = "auto"
    shard_samples: dict[str, int] = field(default_factory=dict)  # url -> samples (manifest)

    def __len__(self) -> int:
        return self.epoch_samples


@dataclass
class PreparedData:
    """A dataset ready for training: three splits, the tokenizer, and where it came from."""

    source: str  # "shapes" | "flickr30k" | "folder" | "webdataset": the dataset actually used
    root: str  # folder the images came from (webdataset: the training shard pattern)
    flip_safe: bool  # False when captions speak of left and right (Shapes)
    train: Split | ShardSplit  # ShardSplit: streamed from shards (data/shards.py)
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

    def split(self, name: str) -> Split | ShardSplit:
        """The split called `name` (train, val or test)."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self, name)
