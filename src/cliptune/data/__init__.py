"""Datasets (Shapes, Flickr30k, local folders, webdataset shards), image-level splits, the
image cache, loaders (`shard_loader.ShardLoader` streams training epochs from shards; both
training loaders are `EpochLoader`s, built by `PreparedData.train_loader`).

Most code needs only `prepare_data`, the `Split`/`PreparedData` it returns (splits are
views of the shared image cache), `TrainLoader` + `device_batches` (training batches,
augmented and normalised on the device), `eval_batches` and `normalize_images`.
"""

from cliptune.data.loader import EpochLoader, TrainLoader, device_batches, eval_batches
from cliptune.data.prepared import PreparedData, prepare_data
from cliptune.data.preprocess import normalize_images
from cliptune.data.shards import ShardSplit
from cliptune.data.splits import Split
from cliptune.errors import DataWarning

__all__ = [
    "DataWarning",
    "EpochLoader",
    "PreparedData",
    "ShardSplit",
    "Split",
    "TrainLoader",
    "device_batches",
    "eval_batches",
    "normalize_images",
    "prepare_data",
]
