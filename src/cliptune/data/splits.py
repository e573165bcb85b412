"""Split a catalog into train/val/test BY IMAGE, from `data.split_seed` or from a split file.

Sizes (`DataConfig.val_size` / `test_size`): >= 1 is a number of images, < 1 a fraction,
None the per-source default: Flickr30k keeps the usual 1,000 val and 1,000 test images
(at most 10% each on a smaller copy), every other source 10% each. Caps
(`max_samples` for train, `max_eval_samples` for val and test) keep the first images of
each split in its seeded order, so a capped split is a subset of the uncapped one.

`Split` is what one split holds once prepared: its images (a view of the image cache),
captions and tokens.

Split files name the images of each split in one of three formats, detected
automatically:

- cliptune's JSON: `{"train": [names], "val": [...], "test": [...]}`.
- Karpathy's `dataset_flickr30k.json` (also his COCO and Flickr8k files): `{"images":
  [{"filename", "split": "train" | "val" | "test" | "restval", ...}]}`; `restval`
  counts as train (the usual practice); the captions in it are not used.
- CLIP_benchmark's `flickr30k_{train,val,test}_karpathy.txt`: a header line, then
  `image.jpg,caption` per line. `data.split_file` names any one of the three files (the
  other two are found beside it by swapping the split word in its name) or their folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cliptune.config import DataConfig
from cliptune.data.image_cache import ImageRows
from cliptune.errors import DataError, warn_skipped

SPLIT_NAMES = ("train", "val", "test")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_TXT_NAME = re.compile(r"^(?P<head>.*?)(?P<split>train|val|test)(?P<tail>[^/]*)\.txt$")

SplitNames = dict[str, list[str]]


def read_split_names(path: Path) -> SplitNames:
    """The image names listed for train, val and test by the split file (or folder) `path`."""
    path = Path(path)
    if path.is_dir():
        return _txt_trio(_txt_in_folder(path))
    if not path.is_file():
        raise DataError(f"split file not found: {path} (check data.split_file)")
    if path.suffix.lower() == ".txt":
        return _txt_trio(_txt_siblings(path))
    return _json(path)


def _json(path: Path) -> SplitNames:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return _karpathy(path, data["images"])
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in SPLIT_NAMES):
        raise DataError(f'{path}: expected {{"train": [names], "val": [...], "test": [...]}} '
                        "or Karpathy's {\"images\": [{\"filename\", \"split\"}, ...]}")
    return {split: [str(name) for name in data[split]] for split in SPLIT_NAMES}


def _karpathy(path: Path, images: list) -> SplitNames:
    names: SplitNames = {split: [] for split in SPLIT_NAMES}
    for number, image in enumerate(images):
        if not isinstance(image, dict) or "filename" not in image or "split" not in image:
            raise DataError(f"{path}: images[{number}] has no filename or split")
        split = KARPATHY_SPLITS.get(image["split"])
        if split is None:
            raise DataError(f"{path}: images[{number}] ({image['filename']}) has split "
                            f"{image['split']!r}; expected one of {', '.join(KARPATHY_SPLITS)}")
        names[split].append(str(image["filename"]))
    return names


def _txt_siblings(path: Path) -> dict[str, Path]:
    match = _TXT_NAME.match(path.name)
    if match is None:
        raise DataError(f"{path}: a .txt split file's name must say train, val or test "
                        "(like flickr30k_test_karpathy.txt), with the other two beside it")
    head, tail = match["head"], match["tail"]
    return {split: path.with_name(f"{head}{split}{tail}.txt") for split in SPLIT_NAMES}


def _txt_in_folder(folder: Path) -> dict[str, Path]:
    files = {}
    for split in SPLIT_NAMES:
        found = sorted(folder.glob(f"*_{split}_karpathy.txt"))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise DataError(f"{folder}: {what} files named *_{split}_karpathy.txt; "
                            "data.split_file needs exactly one per split (or name one file)")
        files[split] = found[0]
    return files


def _txt_trio(files: dict[str, Path]) -> SplitNames:
    return {split: _txt_names(path) for split, path in files.items()}


def _txt_names(path: Path) -> list[str]:
    """Distinct image names of a `image.jpg,caption` file, in order of first appearance."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"split file not found: {path} (the train, val and test .txt files "
                        "must sit side by side)") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    names: dict[str, None] = {}
    for number, line in enumerate(lines):
        name = line.split(",", 1)[0].strip()
        if number == 0 and "." not in name:
            continue  # the header ("image,caption")
        if name:
            names[name] = None
    return list(names)


# ------------------------------------------------------------------ splitting

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
    """Image indices per split from a split file (the formats: see the module docstring).

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


# ----------------------------------------------------------- a prepared split


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
