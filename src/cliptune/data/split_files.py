"""Split files: the image names of each split, in one of three formats, detected automatically.

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
from pathlib import Path

from cliptune.errors import DataError

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
