"""Pick the dataset for a `DataConfig` and read its catalog.

`auto` (the CLI default) uses `data_dir` when given (Flickr30k if it holds a Kaggle
`results.csv`, else a folder dataset), otherwise Flickr30k when it is in the KaggleHub
cache or Kaggle answers within `download_timeout` seconds, otherwise the built-in
Shapes set, with a notice saying why.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cliptune.config import DataConfig
from cliptune.data import flickr30k, shapes
from cliptune.data.catalog import Catalog
from cliptune.data.folder import caption_format, load_folder
from cliptune.data.shards import is_remote
from cliptune.errors import DataError


def fallback_notice(reason: str) -> str:
    """The banner printed when `auto` falls back to Shapes."""
    rule = "=" * 78
    return (
        f"{rule}\nNOTICE: Flickr30k is not available ({reason}).\n"
        "Training on the built-in Shapes dataset instead. To use Flickr30k, run once with "
        "network access\n(it is cached afterwards) or pass --data-dir PATH to a local copy.\n"
        f"{rule}"
    )


def check_paths(config: DataConfig) -> None:
    """Raise `DataError` when a local path the config names does not exist: checked before
    a run looks at its checkpoints, so a typo is reported as a typo, not as a config that
    differs from an earlier run's."""
    data_dir = config.data_dir
    if data_dir and not is_remote(data_dir) and ".tar" not in data_dir:
        if not Path(data_dir).expanduser().exists():
            raise DataError(f"data folder not found: {data_dir} (check --data-dir)")
    if config.split_file and not Path(config.split_file).expanduser().exists():
        raise DataError(f"split file not found: {config.split_file} (check --split-file)")


def load_catalog(config: DataConfig, cache_dir: Path, *, quiet: bool = False) -> Catalog:
    """The catalog of the dataset `config` asks for (see the module docstring for `auto`)."""
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else None
    if config.source == "shapes":
        return shapes.load(cache_dir, config.shapes_images)
    if config.source == "flickr30k":
        return flickr30k.load(config)
    if config.source == "folder":
        if data_dir is None:
            raise DataError("data.source=folder needs a folder: pass --data-dir PATH")
        return load_folder(data_dir, config.format)
    if config.source != "auto":
        raise DataError(
            f"unknown data source {config.source!r}; choose auto, shapes, flickr30k or folder"
        )
    if data_dir is not None:
        fmt = caption_format(data_dir) if config.format == "auto" else config.format
        return load_folder(data_dir, fmt, source="flickr30k" if fmt == "kaggle" else "folder")
    usable, reason = flickr30k.available(config)
    if usable:
        try:
            return flickr30k.load(config)
        except DataError as err:
            reason = str(err)
    if not quiet:
        print(fallback_notice(reason), file=sys.stderr, flush=True)
    return shapes.load(cache_dir, config.shapes_images)
