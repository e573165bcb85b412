"""Export a checkpoint for Hugging Face transformers or OpenCLIP.

  python src/export.py --checkpoint checkpoints/<run>/best.pt --format hf --out exported/hf
  python src/export.py --checkpoint optuna-results/<study> --format open_clip --out exported/oc

--checkpoint takes a .pt file, a run's checkpoint folder (its best.pt) or a study's
results folder (the best trial's checkpoint). The folder gets the weights
(safetensors), configs, tokenizer, README.md (how to load it) and the training config.
"""

from __future__ import annotations

import argparse

from cliptune.cli.common import run_cli
from cliptune.export import FORMATS, export_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a .pt checkpoint, a run's checkpoint folder or optuna-results/<study>")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS),
                        help="hf: transformers CLIPModel folder; open_clip: OpenCLIP local-dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier export in --out")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> None:
    """Parse `argv` and export; user errors raise `CliptuneError`."""
    args = parse_args(argv)
    result = export_checkpoint(args.checkpoint, args.format, args.out, overwrite=args.force)
    print(f"exported {result.checkpoint} ({result.format}) to {result.out_dir}/:")
    for name in result.files:
        print(f"  {name}")
    print(f"how to load it: {result.out_dir / 'README.md'}")


def main(argv: list[str] | None = None) -> None:
    """`cliptune-export`: `run` with user errors printed (exit 2), never a traceback."""
    run_cli(lambda: run(argv))
