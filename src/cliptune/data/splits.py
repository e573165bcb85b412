"""Split a catalog into train/val/test BY IMAGE, from `data.split_seed` or from a split file.

Sizes (`DataConfig.val_size` / `test_size`): >= 1 is a number of images, < 1 a fraction,
None the per-source default: Flickr30k keeps the usual 1,000 val and 1,000 test images
(at most 10% each on a smaller copy), every other source 10% each. Caps
(`max_samples` for train, `max_eval_samples` for val and test) keep the first images of
each split in its seeded order, so a capped split is a subset of the uncapped one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cliptune.config import DataConfig
from cliptune.data.split_files import SPLIT_NAMES, read_split_names
from cliptune.errors import DataError, warn_skipped

DEFAULT_EVAL_FRACTION = 0.1
FLICKR30K_EVAL_IMAGES = 1000

Splits = dict[str, np.ndarray]


def eval_split_size(value: float | None, n_images: int, source: str) -> int:
    """Images in a val or test split of a dataset of `n_images` (see the module docstring)."""
    tenth = max(1, round(DEFAULT_EVAL_FRACTION * n_images))
    if value is None:
        return min(FLICKR30K_EVAL_IMAGES, tenth) if source == "flickr30k" else tenth
    if value >= 1:
        return int(round(value))
    return max(1, round(value * n_images))


def random_split(n_images: int, *, seed: int, val_size: float | None, test_size: float | None,
                 source: str) -> Splits:
    """Disjoint image indices per split, each in a seeded random order."""
    n_val = eval_split_size(val_size, n_images, source)
    n_test = eval_split_size(test_size, n_images, source)
    if n_val + n_test >= n_images:
        raise DataError(
            f"data.val_size ({n_val} images) and data.test_size ({n_test}) leave no training "
            f"images out of {n_images}; make them smaller"
        )
    order = np.random.default_rng(seed).permutation(n_images)
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val],
            "train": order[n_test + n_val:]}


def read_split_file(path: Path, image_names: list[str], seed: int) -> Splits:
    """Image indices per split from a split file (`split_files` lists the formats).

    A listed name matches an image of the dataset by its name or, failing that, by its
    file name alone (Karpathy's files name `1000092795.jpg` wherever the folder puts it).
    Names not in the dataset (missing from the image folder, or unreadable) are skipped
    with a warning naming them; an image listed in two splits is an error. Each split is
    shuffled by `seed`.
    """
    path = Path(path)
    listed_names = read_split_names(path)
    index = {name: i for i, name in enumerate(image_names)}
    by_file = {}
    for i, name in enumerate(image_names):
        by_file.setdefault(Path(name).name, []).append(i)
    owner: dict[int, str] = {}
    rng = np.random.default_rng(seed)
    splits: Splits = {}
    for split in SPLIT_NAMES:
        listed = listed_names[split]
        known, unknown = [], []
        for name in listed:
            row = index.get(name)
            if row is None and len(by_file.get(Path(name).name, ())) == 1:
                row = by_file[Path(name).name][0]
            if row is None:
                unknown.append(name)
                continue
            if owner.setdefault(row, split) != split:
                raise DataError(f"{path}: image {name} is in both {owner[row]} and {split}")
            known.append(row)
        warn_skipped(len(unknown), len(listed),
                     f"{split} images not in the dataset (missing from the image folder or "
                     "unreadable)", str(path), unknown)
        if not known:
            raise DataError(f"{path}: the {split} split has no images of this dataset "
                            f"({len(listed)} listed, e.g. {', '.join(listed[:3]) or 'none'}); "
                            "is it the split file of another dataset?")
        splits[split] = rng.permutation(np.array(sorted(set(known)), dtype=np.int64))
    return splits


def cap_and_sort(splits: Splits, max_samples: int | None, max_eval_samples: int | None) -> Splits:
    """Keep the first `max_samples` train and `max_eval_samples` val/test images; sort each."""
    caps = {"train": max_samples, "val": max_eval_samples, "test": max_eval_samples}
    return {name: np.sort(indices[:caps[name]]).astype(np.int64) for name, indices in splits.items()}


def uncapped_splits(image_names: list[str], config: DataConfig, *, source: str) -> Splits:
    """Image indices per split for `config` (split file or random split) in their seeded
    order, before the caps: decided by `config.split_seed` alone, so runs with different
    seeds see the same split."""
    seed = config.split_seed
    if config.split_file:
        return read_split_file(Path(config.split_file).expanduser(), image_names, seed)
    return random_split(len(image_names), seed=seed, val_size=config.val_size,
                        test_size=config.test_size, source=source)


def split_images(image_names: list[str], config: DataConfig, *, source: str) -> Splits:
    """Sorted image indices per split for `config`: `uncapped_splits`, capped."""
    splits = uncapped_splits(image_names, config, source=source)
    return cap_and_sort(splits, config.max_samples, config.max_eval_samples)
