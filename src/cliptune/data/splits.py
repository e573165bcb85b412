"""Split a catalog into train/val/test BY IMAGE, from a seed or from a split file.

Sizes (`DataConfig.val_size` / `test_size`): >= 1 is a number of images, < 1 a fraction,
None the per-source default: Flickr30k keeps the usual 1,000 val and 1,000 test images
(at most 10% each on a smaller copy), every other source 10% each. Caps
(`max_samples` for train, `max_eval_samples` for val and test) keep the first images of
each split in its seeded order, so a capped split is a subset of the uncapped one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cliptune.config import DataConfig
from cliptune.data.issues import warn_skipped
from cliptune.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
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
    """Image indices per split from a JSON file `{"train": [names], "val": [...], "test": [...]}`.

    Names not in the dataset (missing or unreadable images) are skipped with a warning;
    an image listed in two splits is an error. Each split is shuffled by `seed`.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file not found: {path} (check data.split_file)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in SPLIT_NAMES):
        raise DataError(f'{path}: expected {{"train": [names], "val": [...], "test": [...]}}')
    index = {name: i for i, name in enumerate(image_names)}
    owner: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    splits: Splits = {}
    for split in SPLIT_NAMES:
        listed = [str(name) for name in data[split]]
        for name in listed:
            if owner.setdefault(name, split) != split:
                raise DataError(f"{path}: image {name} is in both {owner[name]} and {split}")
        unknown = [name for name in listed if name not in index]
        warn_skipped(len(unknown), len(listed), f"{split} images not in the dataset",
                     str(path), unknown)
        known = np.array(sorted({index[name] for name in listed if name in index}), dtype=np.int64)
        if len(known) == 0:
            raise DataError(f"{path}: the {split} split has no images of this dataset")
        splits[split] = rng.permutation(known)
    return splits


def cap_and_sort(splits: Splits, max_samples: int | None, max_eval_samples: int | None) -> Splits:
    """Keep the first `max_samples` train and `max_eval_samples` val/test images; sort each."""
    caps = {"train": max_samples, "val": max_eval_samples, "test": max_eval_samples}
    return {name: np.sort(indices[:caps[name]]).astype(np.int64) for name, indices in splits.items()}


def split_images(image_names: list[str], config: DataConfig, *, seed: int, source: str) -> Splits:
    """Sorted image indices per split for `config` (split file or seeded random split)."""
    if config.split_file:
        splits = read_split_file(Path(config.split_file).expanduser(), image_names, seed)
    else:
        splits = random_split(len(image_names), seed=seed, val_size=config.val_size,
                              test_size=config.test_size, source=source)
    return cap_and_sort(splits, config.max_samples, config.max_eval_samples)
