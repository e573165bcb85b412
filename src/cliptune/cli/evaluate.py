"""Evaluate a checkpoint: `python src/evaluate.py --checkpoint checkpoints/<run>/best.pt`.

Rebuilds the model from the checkpoint alone, prepares the same split the run used
(its data config, seed and tokenizer; data flags override the source), prints how many
images and captions it scores, the retrieval table, and writes the metrics as JSON. A
run trained on a subset (an HPO trial's data.max_eval_samples) is scored on that subset
unless --all-images asks for the whole split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cliptune.checkpoint import load_model
from cliptune.cli.common import add_data_args, apply_data_args, run_cli
from cliptune.evaluation import checkpoint_split, evaluate_split
from cliptune.runtime import resolve_device, resolve_precision
from cliptune.tables import format_metrics_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt checkpoint")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"))
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="evaluation batch size (default: the run's train.eval_batch_size)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision of the forward passes (default: the run's "
                        "train.precision, as its metrics.json was computed; fp16: CUDA only)")
    parser.add_argument("--all-images", action="store_true",
                        help="score every image of the split, also when the run capped it "
                        "(data.max_eval_samples / data.max_samples, e.g. an HPO trial)")
    parser.add_argument("--json", metavar="OUT",
                        help="metrics JSON (default: eval_<split>.json next to the checkpoint)")
    add_data_args(parser)
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 2:
        parser.error("--batch-size must be at least 2 (the loss needs negatives)")
    return args


def run(argv: list[str] | None = None) -> None:
    """Parse `argv` and do the work; user errors raise `CliptuneError`."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device)
    apply_data_args(loaded.config, args)
    data = loaded.config.data
    cap_key = "max_samples" if args.split == "train" else "max_eval_samples"
    cap = getattr(data, cap_key)
    if args.all_images:
        data.max_samples = data.max_eval_samples = None
    split = checkpoint_split(loaded, args.split)
    scored = f"{args.split}: {len(split.image_names)} images, {len(split.captions)} captions"
    if cap is not None and not args.all_images and len(split.image_names) == cap:
        scored += (f" (the run's data.{cap_key}={cap} caps the split; --all-images scores "
                   "all of it)")
    print(scored, flush=True)
    precision = resolve_precision(args.precision or loaded.config.train.precision, device)
    metrics = evaluate_split(
        loaded.model, split, device=device, precision=precision,
        batch_size=args.batch_size or loaded.config.train.eval_batch_size,
    )
    print(format_metrics_table({args.split: metrics}))
    out = Path(args.json) if args.json else Path(args.checkpoint).parent / f"eval_{args.split}.json"
    report = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "images": len(split.image_names),
        "captions": len(split.captions),
        "metrics": metrics,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"metrics: {out}")


def main(argv: list[str] | None = None) -> None:
    """`cliptune-evaluate`: `run` with user errors printed (exit 2), never a traceback."""
    run_cli(lambda: run(argv))
