"""The samples of webdataset shards: an image and captions out of each, read in order with
errors that name the shard, for the tokenizer (training captions) and for evaluation.

Validation and test are small: their samples are written out once as files and decoded
into the ordinary uint8 image cache (`eval_catalog`), so evaluation is the same code as
for any dataset. A shard that cannot be opened or read to its end (truncated, not a tar,
or shorter than its manifest says) stops the read with an error that names it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from filelock import FileLock

from cliptune.data.catalog import Catalog
from cliptune.data.preprocess import IMAGE_EXTENSIONS
from cliptune.data.shards import MANIFEST, ShardPlan, ShardSplit
from cliptune.errors import DataError, warn_skipped
from cliptune.files import write_atomic

TOKENIZER_CAPTIONS = 100_000  # training captions the tokenizer is trained on (shard order)


def image_entry(sample: dict[str, Any]) -> tuple[str, bytes] | None:
    """(extension, encoded bytes) of a sample's image, or None when it has none."""
    for ext in IMAGE_EXTENSIONS:
        if isinstance(sample.get(ext), bytes | bytearray):
            return ext, bytes(sample[ext])
    return None


def captions_of(sample: dict[str, Any], caption_field: str) -> list[str]:
    """Every non-empty caption of a sample: `txt`, a json field (a string or a list), or for
    `auto` the json `captions` list make_shards writes, else `txt`. Empty when none."""
    meta = None
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError):
            meta = None
    if caption_field == "txt" or (caption_field == "auto" and not (
            isinstance(meta, dict) and "captions" in meta)):
        raw = sample.get("txt")
        try:
            value: Any = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            value = None
    else:
        key = "captions" if caption_field == "auto" else caption_field
        value = meta.get(key) if isinstance(meta, dict) else None
    values = value if isinstance(value, list) else [value]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def shard_of(exn: BaseException, urls: list[str], current: str | None) -> str:
    """The shard an exception from webdataset's tar reader is about."""
    names = set(urls)
    for arg in getattr(exn, "args", ()):
        if isinstance(arg, str) and arg in names:
            return arg
    return current or "?"


FIX = "write it again (python src/make_shards.py) or leave it out of the pattern"


def shard_error(shard: str, exn: BaseException) -> str:
    """The message for a shard that cannot be read."""
    reason = str(exn.args[0]).split(" @ ")[0] if exn.args else ""  # webdataset appends " @ file"
    return (f"shard {shard} cannot be read ({type(exn).__name__}: {reason}); it is truncated "
            f"or not a tar file: {FIX}")


def short_shards(counts: dict[str, int], expected: dict[str, int]) -> str | None:
    """The message for a shard that ended before the samples its manifest lists (a tar cut
    between two members reads as a shorter, valid tar), or None."""
    for url, n in counts.items():
        if url in expected and n < expected[url]:
            return (f"shard {url} ended after {n} of the {expected[url]} samples its "
                    f"{MANIFEST} lists: it is truncated; {FIX}")
    return None


class TrackedShards:
    """A shard source that remembers which shard the tar reader is on (for errors)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.current = urls, None

    def __iter__(self) -> Iterator[dict[str, str]]:
        for url in self.urls:
            self.current = url
            yield {"url": url}


def read_samples(urls: list[str], *, expected: dict[str, int] | None = None,
                 select=None) -> Iterator[dict[str, Any]]:
    """Every sample of `urls` in order (raw bytes per extension); a shard that cannot be
    read, or holds fewer samples than `expected` (url -> count) says, raises `DataError`
    naming it."""
    source = TrackedShards(urls)

    def handler(exn: BaseException) -> bool:
        if isinstance(exn, DataError):  # ours, passed up through webdataset (which adds args)
            raise DataError(exn.args[0]) from None
        raise DataError(shard_error(shard_of(exn, urls, source.current), exn)) from exn

    counts = dict.fromkeys(urls, 0)
    for sample in wds.DataPipeline(lambda: iter(source),
                                   wds.tarfile_to_samples(handler=handler, select_files=select)):
        counts[sample["__url__"]] += 1
        yield sample
    message = short_shards(counts, expected or {})
    if message:
        raise DataError(message)


def train_captions(split: ShardSplit, limit: int = TOKENIZER_CAPTIONS) -> list[str]:
    """Up to `limit` training captions in shard order, for the tokenizer (images unread)."""
    captions: list[str] = []

    def not_image(name: str) -> bool:
        return name.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS

    for sample in read_samples(split.urls, select=not_image):  # counts: see the epochs
        captions += captions_of(sample, split.caption_field)
        if len(captions) >= limit:
            break
    if not captions:
        raise DataError(f"the training shards {split.pattern} hold no captions "
                        f"(data.caption_field={split.caption_field})")
    return captions[:limit]


def eval_catalog(plan: ShardPlan, cache_dir: Path) -> Catalog:
    """The validation and test samples written out as files under the cache folder (once:
    unchanged files are left alone) and listed as one catalog named `val/<key>.<ext>` and
    `test/<key>.<ext>`, every caption of a sample kept. Samples without an image or a
    caption are skipped with a warning."""
    key = hashlib.sha256(json.dumps([plan.val_urls, plan.test_urls]).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "shards" / key
    folder.mkdir(parents=True, exist_ok=True)
    pairs: list[tuple[str, str]] = []
    with FileLock(str(folder) + ".lock"):
        for split, urls in (("val", plan.val_urls), ("test", plan.test_urls)):
            skipped, total = [], 0
            for sample in read_samples(urls, expected=plan.expected):
                total += 1
                image, captions = image_entry(sample), captions_of(sample, "auto")
                name = f"{split}/{sample['__key__']}"
                if image is None or not captions or ".." in Path(name).parts:
                    skipped.append(name)
                    continue
                name = f"{name}.{image[0]}"
                path = folder / name
                if not (path.is_file() and path.read_bytes() == image[1]):
                    write_atomic(path, image[1])
                pairs += [(name, caption) for caption in captions]
            warn_skipped(len(skipped), total, "samples without an image or a caption",
                         f"the {split} shards", skipped)
    if not pairs:
        raise DataError("the validation and test shards hold no usable samples")
    return Catalog.from_pairs(pairs, source="webdataset", root=folder)
