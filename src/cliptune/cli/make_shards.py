"""Write any dataset cliptune reads as webdataset shards (img2dataset's layout).

  python src/make_shards.py --data shapes --out shards/shapes
  python src/make_shards.py --data-dir ~/flickr30k --out shards/flickr30k --shard-size 1000
  python src/main.py --data webdataset --data-dir shards/flickr30k

The dataset is read and split as training reads it (the same --data/--split-file/--set
data.* settings give the same split); each split becomes numbered shards of
{key}.jpg + {key}.txt + {key}.json, and manifest.json records the split.
"""

from __future__ import annotations

import argparse

from cliptune.cli.common import add_data_args, add_set_arg, apply_data_args, run_cli
from cliptune.config import RunConfig, apply_overrides
from cliptune.data.shard_writer import shard_summary, write_shards


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the shards")
    parser.add_argument("--shard-size", type=int, default=1000, metavar="N",
                        help="images per shard (default 1000)")
    parser.add_argument("--force", action="store_true", help="replace shards already in --out")
    add_data_args(parser)
    add_set_arg(parser)
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    """Parse `argv` and write the shards; user errors raise `CliptuneError`."""
    args = parse_args(argv)
    config = RunConfig()
    apply_data_args(config, args)
    config = apply_overrides(config, args.set)
    manifest = write_shards(config.data, args.out, shard_size=args.shard_size,
                            overwrite=args.force)
    print(shard_summary(manifest, args.out))


def main(argv: list[str] | None = None) -> None:
    """`cliptune-make-shards`: `run` with user errors printed (exit 2), never a traceback."""
    run_cli(lambda: run(argv))
