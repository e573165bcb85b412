"""Writing any dataset cliptune reads into webdataset shards (`make_shards`).

The dataset is read and split exactly as training would read it (`load_catalog` +
`split_images`: the same `data.*` settings give the same split), and each split is
written with `webdataset.ShardWriter` in img2dataset's layout: one sample per image,
`{key}.jpg` (the file's own bytes, never re-encoded; PNG and WebP keep their format,
anything else is stored as lossless PNG), `{key}.txt` (its first caption) and
`{key}.json` (`{"key", "image", "captions": [every caption], "split"}`), in numbered
shards `train-000000.tar`, `val-000000.tar`, ... Training samples are written in an order
shuffled by `data.split_seed`, so each shard is a random sample of the split.

`manifest.json` next to the shards records the split: each split's brace pattern, shard,
sample and caption counts, the source, and what the dataset says about augmentation
(flips, crop scale), so `--data webdataset --data-dir <folder>` trains on it as it is.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from cliptune.config import DataConfig
from cliptune.data.catalog import Catalog
from cliptune.data.image_cache import default_cache_dir
from cliptune.data.preprocess import DECODE_ERRORS
from cliptune.data.shards import MANIFEST, MANIFEST_FORMAT
from cliptune.data.sources import load_catalog
from cliptune.data.splits import SPLIT_NAMES, split_images
from cliptune.errors import DataError, warn_skipped
from cliptune.files import write_atomic

KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def shard_pattern(split: str, n_shards: int) -> str:
    """The brace pattern of a split's `n_shards` shards (a plain name for one shard)."""
    if n_shards == 1:
        return f"{split}-000000.tar"
    return f"{split}-{{000000..{n_shards - 1:06d}}}.tar"


def encoded_image(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) to store for the image file at `path`: the file itself when it is
    a JPEG, PNG or WebP, else a lossless PNG of it. Raises one of `DECODE_ERRORS`."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.verify()  # header and structure; a corrupt file raises here
        kind = image.format
    if kind in KEPT_FORMATS:
        return KEPT_FORMATS[kind], data
    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG")
    return "png", out.getvalue()


def _clear(out_dir: Path, overwrite: bool) -> None:
    old = sorted(out_dir.glob("*.tar")) + ([out_dir / MANIFEST] if (out_dir / MANIFEST).exists() else [])
    if old and not overwrite:
        raise DataError(f"--out {out_dir} already holds shards ({old[0].name}, ...); choose an "
                        "empty folder or pass --force to replace them")
    for path in old:
        path.unlink()


def _write_split(catalog: Catalog, split: str, order: np.ndarray, out_dir: Path,
                 shard_size: int) -> dict[str, Any]:
    by_image: dict[int, list[str]] = {}
    for caption, image in zip(catalog.captions, catalog.caption_image.tolist(), strict=True):
        by_image.setdefault(image, []).append(caption)
    pattern = str(out_dir / f"{split}-%06d.tar")
    samples = captions = 0
    bad: list[str] = []
    counts: list[int] = []  # samples per shard, so a reader notices a shard cut short
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0,
                         post=lambda _: counts.append(writer.count)) as writer:
        for image in order.tolist():
            name = catalog.image_names[image]
            try:
                ext, data = encoded_image(catalog.root / name)
            except (*DECODE_ERRORS, FileNotFoundError) as err:
                bad.append(f"{name}: {type(err).__name__}")
                continue
            texts = by_image[image]
            key = f"{samples:09d}"
            writer.write({"__key__": key, ext: data, "txt": texts[0],
                          "json": json.dumps({"key": key, "image": name, "captions": texts,
                                              "split": split}).encode("utf-8")})
            samples += 1
            captions += len(texts)
        n_shards = writer.shard
    warn_skipped(len(bad), len(order), "images that could not be read", str(catalog.root), bad)
    if samples == 0:
        raise DataError(f"the {split} split has no readable image; nothing to write")
    return {"pattern": shard_pattern(split, n_shards), "shards": n_shards, "samples": samples,
            "captions": captions, "shard_samples": counts}


def write_shards(config: DataConfig, out_dir: str | Path, *, shard_size: int = 1000,
                 overwrite: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Write the dataset `config` names (any source but webdataset) into shards under
    `out_dir`, one pattern per split, and `manifest.json`; returns the manifest."""
    if config.source == "webdataset":
        raise DataError("make_shards reads a dataset (--data auto, shapes, flickr30k or folder),"
                        " not shards; --data webdataset is what trains on its output")
    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, overwrite)
    cache_dir = default_cache_dir(config.cache_dir)
    catalog = load_catalog(config, cache_dir, quiet=quiet)
    indices = split_images(catalog.image_names, config, source=catalog.source)
    splits = {}
    for split in SPLIT_NAMES:
        order = indices[split]
        if split == "train":  # each shard a random sample of the split
            order = np.random.default_rng([config.split_seed, 7]).permutation(order)
        splits[split] = _write_split(catalog, split, order, out, shard_size)
    manifest = {
        "format": MANIFEST_FORMAT, "version": 1, "source": catalog.source,
        "dataset": str(catalog.root), "split_seed": config.split_seed,
        "split_file": config.split_file, "flip_safe": catalog.flip_safe,
        "crop_scale": list(catalog.crop_scale), "splits": splits,
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def shard_summary(manifest: dict[str, Any], out_dir: str | Path) -> str:
    """What make_shards prints: one line per split and how to train on the shards."""
    lines = [f"wrote {manifest['source']} ({manifest['dataset']}) to {out_dir}/:"]
    for split, info in manifest["splits"].items():
        lines.append(f"  {split:5s} {info['pattern']}: {info['samples']} images, "
                     f"{info['captions']} captions, {info['shards']} shard(s)")
    lines.append(f"  {MANIFEST}: the split, for --data webdataset --data-dir {out_dir}")
    return "\n".join(lines)

