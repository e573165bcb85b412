"""Read a dataset from a local folder: find its caption file and image folder.

The caption file is searched for in the folder and up to two levels below it
(shallowest first, so Kaggle's duplicate `results.csv` inside the image folder is
never read). Images are looked up in the caption file's folder and its sub-folders,
then in the dataset folder and its sub-folders; the first that holds the named images
is used and the others (such as Kaggle's nested duplicate image folder) are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cliptune.data.catalog import Catalog
from cliptune.data.parsers import PARSERS, read_caption_file, sniff_format
from cliptune.errors import DataError, warn_skipped

CAPTION_SUFFIXES = (".csv", ".txt", ".tsv", ".json", ".token")
SEARCH_DEPTH = 2
_SAMPLE_NAMES = 20  # names probed when choosing the image folder


def _candidate_files(folder: Path) -> list[Path]:
    """Caption-like files under `folder`, shallowest first, then by name."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        depth = len(Path(dirpath).relative_to(folder).parts)
        if depth >= SEARCH_DEPTH:
            dirnames.clear()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(CAPTION_SUFFIXES) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: (len(p.relative_to(folder).parts), str(p)))


def find_caption_file(folder: Path, fmt: str = "auto") -> tuple[Path, str]:
    """The caption file under `folder` and its format (`fmt`, or detected when `auto`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder} (check --data-dir)")
    if fmt != "auto" and fmt not in PARSERS:
        raise DataError(f"unknown caption format {fmt!r}; choose auto or one of: {', '.join(PARSERS)}")
    candidates = _candidate_files(folder)
    if not candidates:
        raise DataError(
            f"no caption file in {folder}: expected results.csv, captions.txt, a "
            "file<TAB>caption .txt/.tsv or a COCO captions .json (see docs/DATASETS.md)"
        )
    for path in candidates:
        detected = sniff_format(path)
        if detected is not None and fmt in ("auto", detected):
            return path, detected
    listed = ", ".join(str(p.relative_to(folder)) for p in candidates[:5])
    if fmt == "auto":
        raise DataError(
            f"unknown caption format in {folder} (looked at {listed}); supported formats: "
            f"{', '.join(PARSERS)} (see docs/DATASETS.md)"
        )
    raise DataError(
        f"no caption file in format {fmt!r} in {folder} (looked at {listed}); "
        "set data.format=auto to detect the format"
    )


def find_image_dir(caption_dir: Path, folder: Path, names: list[str]) -> Path:
    """The folder holding most of `names`: `caption_dir`, one of its sub-folders, or else
    `folder` (the dataset root) or one of its sub-folders (COCO keeps its captions in
    `annotations/` next to the image folders)."""
    sample = names[:: max(1, len(names) // _SAMPLE_NAMES)][:_SAMPLE_NAMES]
    candidates = []
    for parent in (caption_dir, folder):
        for candidate in [parent] + sorted(p for p in parent.iterdir() if p.is_dir()):
            if candidate not in candidates:
                candidates.append(candidate)
    best, best_hits = caption_dir, 0
    for candidate in candidates:
        hits = sum((candidate / name).is_file() for name in sample)
        if hits > best_hits:
            best, best_hits = candidate, hits
    return best


def drop_missing_images(catalog: Catalog) -> Catalog:
    """The catalog without images whose files do not exist (warned about, with a count)."""
    listing = set(os.listdir(catalog.root))
    present = np.array(
        [name in listing if "/" not in name else (catalog.root / name).is_file()
         for name in catalog.image_names],
        dtype=bool,
    )
    missing = [name for name, ok in zip(catalog.image_names, present, strict=True) if not ok]
    if len(missing) == len(catalog):
        raise DataError(
            f"none of the {len(catalog)} images named in the captions exist in {catalog.root} "
            f"(e.g. {missing[0]}); check --data-dir"
        )
    warn_skipped(len(missing), len(catalog), "images named in the captions but missing",
                 str(catalog.root), missing)
    return catalog.subset(np.flatnonzero(present)) if missing else catalog


def load_folder(folder: Path, fmt: str = "auto", *, source: str = "folder") -> Catalog:
    """Read the dataset under `folder`: captions, image folder, missing images dropped."""
    caption_file, detected = find_caption_file(Path(folder), fmt)
    pairs = read_caption_file(caption_file, detected)
    if not pairs:
        raise DataError(f"{caption_file}: no captions found")
    names = sorted({name for name, _ in pairs})
    image_dir = find_image_dir(caption_file.parent, Path(folder), names)
    catalog = Catalog.from_pairs(pairs, source=source, root=image_dir)
    return drop_missing_images(catalog)


def caption_format(folder: Path) -> str:
    """The detected format of the caption file under `folder`."""
    return find_caption_file(Path(folder))[1]
