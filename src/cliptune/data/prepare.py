"""`prepare_data`: from a `DataConfig` to tokenized train/val/test splits of cached images."""

from __future__ import annotations

import numpy as np

from cliptune.config import DataConfig
from cliptune.data.catalog import Catalog
from cliptune.data.image_cache import default_cache_dir, load_or_build
from cliptune.data.image_rows import ImageRows
from cliptune.data.prepared import PreparedData, Split
from cliptune.data.sources import load_catalog
from cliptune.data.splits import SPLIT_NAMES, cap_and_sort, uncapped_splits
from cliptune.errors import ConfigError
from cliptune.tokenizer import Tokenizer


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


def summary(data: PreparedData, *, reused: bool) -> str:
    """One line: source, images, captions, split sizes, image cache."""
    splits = [data.train, data.val, data.test]
    images = sum(len(s) for s in splits)
    captions = sum(len(s.captions) for s in splits)
    sizes = " / ".join(f"{s.name} {len(s)}" for s in splits)
    return (f"data: {data.source} ({data.root}): {images} images, {captions} captions; "
            f"split {sizes} images; {data.image_size}px image cache "
            f"{'reused' if reused else 'built'}")
