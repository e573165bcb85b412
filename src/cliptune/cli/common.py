"""Argument helpers shared by the command-line tools, and their error handling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cliptune.config import CHOICES, RunConfig, set_value
from cliptune.errors import CliptuneError

# flag destination -> config key; flags left unset keep the config's value
DATA_FLAGS = {  # flag dest -> config key
    "data": "data.source",
    "data_dir": "data.data_dir",
    "data_format": "data.format",
    "split_file": "data.split_file",
    "cache_dir": "data.cache_dir",
}


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Add `--data`, `--data-dir`, `--data-format`, `--split-file` and `--cache-dir`."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", choices=CHOICES["data.source"],
                       help="dataset: auto (Flickr30k, else Shapes), shapes, flickr30k, folder "
                       "or webdataset (shards: --data-dir PATTERN or make_shards' folder)")
    group.add_argument("--data-dir", metavar="PATH",
                       help="local Flickr30k copy or a folder of images with captions")
    group.add_argument("--data-format", choices=CHOICES["data.format"],
                       help="caption file format of --data-dir (default: auto-detect)")
    group.add_argument("--split-file", metavar="PATH",
                       help='image names per split: JSON {"train": [...], "val": [...], '
                       '"test": [...]}, Karpathy\'s dataset_flickr30k.json, or a '
                       "flickr30k_{train,val,test}_karpathy.txt file or their folder")
    group.add_argument("--cache-dir", metavar="PATH",
                       help="preprocessed image cache (default: $CLIPTUNE_CACHE or ~/.cache/cliptune)")


def apply_data_args(config: RunConfig, args: argparse.Namespace) -> None:
    """Copy the data flags the user gave into `config.data`."""
    for dest, key in DATA_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            set_value(config, key, value)


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable `--set KEY=VALUE` config override."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.lr=3e-4 (repeatable)")


def run_cli(main_fn: Callable[[], int | None]) -> None:
    """Run `main_fn` and exit: user errors print `error: <message>` (exit 2, no traceback),
    Ctrl-C exits with 130; otherwise the exit code is `main_fn`'s return value (or 0)."""
    try:
        code = main_fn()
    except CliptuneError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
