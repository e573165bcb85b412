"""Where webdataset shards are: brace patterns, make_shards' manifest, and the plan of a run.

Shards are tar files in img2dataset's layout (`{key}.jpg` + `{key}.txt` and/or
`{key}.json`), named by a brace pattern (`shards/train-{000000..000099}.tar`), local or
any URL the `webdataset` library opens (`pipe:`, `http://`, fsspec). `make_shards`
(`shard_writer.py`) writes them with a `manifest.json` that names every split's pattern
and counts its samples; without one, `data.val_shards` and `data.test_shards` name the
evaluation shards and `data.epoch_samples` the epoch. `shard_samples.py` reads their
samples, `shard_loader.py` streams the training epochs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from cliptune.config import DataConfig
from cliptune.data.augment import CROP_SCALE
from cliptune.errors import DataError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "cliptune-shards"


def is_remote(url: str) -> bool:
    """Whether `url` is opened by webdataset's URL handlers rather than as a local file."""
    return "://" in url or url.startswith("pipe:")


def expand(pattern: str, flag: str) -> list[str]:
    """The shard names of a brace pattern (`a-{000..009}.tar`, `::`-separated lists too);
    local files must exist (the error names the first one missing and `flag`)."""
    try:
        urls = list(wds.shardlists.expand_urls(pattern))
    except (ValueError, IndexError) as err:
        raise DataError(f"{flag}={pattern!r} is not a shard pattern ({err})") from err
    if not urls:
        raise DataError(f"{flag}={pattern!r} names no shards")
    missing = [url for url in urls if not is_remote(url) and not Path(url).is_file()]
    if missing:
        raise DataError(f"{flag}={pattern!r}: shard {missing[0]} does not exist "
                        f"({len(missing)} of {len(urls)} missing); check the pattern")
    return urls


def looks_like_shards(data_dir: str | None) -> bool:
    """Whether `--data-dir` names shards: a `.tar` pattern/URL or a folder with a manifest."""
    if not data_dir:
        return False
    if ".tar" in data_dir or is_remote(data_dir):
        return True
    return (Path(data_dir).expanduser() / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The `manifest.json` make_shards wrote in `folder`, or None when there is none."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{path}: not a cliptune shard manifest (no \"format\": "
                        f"\"{MANIFEST_FORMAT}\")")
    return manifest


@dataclass
class ShardSplit:
    """The training split as webdataset shards (`ShardLoader` streams it): an epoch is
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
class ShardPlan:
    """Where every split's shards are, and what the dataset says about augmentation."""

    train: ShardSplit
    val_urls: list[str]
    test_urls: list[str]
    root: str  # the training pattern, for the summary line
    expected: dict[str, int] = field(default_factory=dict)  # samples per shard (manifest)
    flip_safe: bool = True
    crop_scale: tuple[float, float] = CROP_SCALE


def resolve(config: DataConfig) -> ShardPlan:
    """The shards `config` asks for: `data_dir` is the training pattern or make_shards'
    folder; val/test patterns and epoch_samples default to the manifest's (epoch_samples
    capped by `data.max_samples`)."""
    if not config.data_dir:
        raise DataError("data.source=webdataset needs the training shards: pass --data-dir "
                        "'shards/train-{000000..000099}.tar' or the folder make_shards wrote")
    data_dir = os.path.expanduser(config.data_dir)
    folder = Path(data_dir) if not is_remote(data_dir) and Path(data_dir).is_dir() else None
    manifest = None
    if folder is not None:
        manifest = read_manifest(folder)
        if manifest is None:
            raise DataError(f"--data-dir {data_dir} is a folder without {MANIFEST}; pass a "
                            "shard pattern such as 'train-{000000..000099}.tar' instead")
    elif not is_remote(data_dir):
        folder = Path(data_dir).parent
        manifest = read_manifest(folder)
    splits = (manifest or {}).get("splits", {})

    def pattern(split: str, configured: str | None) -> str:
        if configured:
            return os.path.expanduser(configured)
        if split == "train" and not Path(data_dir).is_dir():
            return data_dir
        if split in splits:
            return str(folder / splits[split]["pattern"])
        raise DataError(f"no {split} shards: set data.{split}_shards (a shard pattern), or "
                        f"pass the folder make_shards wrote (its {MANIFEST} names them)")

    train_pattern = pattern("train", None)
    expected = {}
    for info in splits.values():
        names = wds.shardlists.expand_urls(info["pattern"])
        expected.update({str(folder / name): n
                         for name, n in zip(names, info.get("shard_samples", []), strict=False)})
    urls = expand(train_pattern, "--data-dir")
    epoch_samples = config.epoch_samples
    if epoch_samples is None:  # the training shards' samples, as the manifest counts them
        if not all(url in expected for url in urls):
            raise DataError("set data.epoch_samples (training samples per epoch): no "
                            f"{MANIFEST} next to the training shards counts their samples")
        epoch_samples = sum(expected[url] for url in urls)
    if config.max_samples:  # the quick-run cap (HPO's fidelity) caps the epoch
        epoch_samples = min(epoch_samples, config.max_samples)
    crop = tuple((manifest or {}).get("crop_scale", CROP_SCALE))
    train = ShardSplit("train", train_pattern, urls, epoch_samples, config.caption_field,
                       {url: expected[url] for url in urls if url in expected})
    return ShardPlan(train, expand(pattern("val", config.val_shards), "data.val_shards"),
                     expand(pattern("test", config.test_shards), "data.test_shards"),
                     train_pattern, expected, bool((manifest or {}).get("flip_safe", True)), crop)
