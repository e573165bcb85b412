"""Train one CLIP: `python src/main.py [--config experiments/default.yaml] [flags]`.

Trains, validates every epoch, checkpoints (auto-resuming an interrupted run), then
evaluates the best checkpoint on the test split and writes metrics.json. Started by
`torchrun --nproc_per_node N src/main.py ...` it trains data-parallel on N processes
(train.batch_size is the global batch); rank 0 prints and writes every file.
"""

from __future__ import annotations

import argparse
import sys

import torch.distributed as dist

from cliptune import distributed
from cliptune.cli.common import add_data_args, add_set_arg, apply_data_args, run_cli
from cliptune.config import apply_overrides, load_config, model_preset, set_value
from cliptune.resources import default_experiment
from cliptune.tables import format_metrics_table
from cliptune.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="experiment YAML (default: experiments/default.yaml "
                        "on a CPU, experiments/gpu-flickr30k.yaml or gpu-shapes.yaml on a GPU)")
    parser.add_argument("--preset", help="model preset: tiny, small, vit-b-32")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--temperature", type=float, help="initial softmax temperature")
    parser.add_argument("--max-samples", type=int, help="cap on training images (quick runs)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--run-name", help="names runs/<name>/ and checkpoints/<name>/")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (under torchrun auto or "
                        "cuda: each rank on cuda:LOCAL_RANK)")
    parser.add_argument("--seed", type=int)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", default="auto",
                        help="auto (continue checkpoints/<run>/last.pt if present) or a checkpoint path")
    resume.add_argument("--no-resume", action="store_true", help="start a new run")
    add_data_args(parser)
    add_set_arg(parser)
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace):
    """Config file (chosen by the hardware unless --config), then preset, then the flags,
    then `--set` overrides."""
    if args.config is None:
        choice = default_experiment("train", args.device, args.data)
        args.chosen = choice.line()  # printed once the rank is known (rank 0 only)
        args.config = str(choice.path)
    config = load_config(args.config)
    if args.preset:
        config.model = model_preset(args.preset)
    apply_data_args(config, args)
    flags = {
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "model.init_temperature": args.temperature, "data.max_samples": args.max_samples,
        "model.image_size": args.image_size, "name": args.run_name, "train.device": args.device,
        "seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            set_value(config, key, value)
    return apply_overrides(config, args.set)


def run(argv: list[str] | None = None) -> int:
    """Parse `argv` and do the work; user errors raise `CliptuneError`. Returns the exit code."""
    args = parse_args(argv)
    config = build_config(args)
    ctx = distributed.init_from_env(config.train.device)
    if ctx.is_main and getattr(args, "chosen", None):
        print(args.chosen, flush=True)
    trainer = Trainer(config, resume=None if args.no_resume else args.resume)
    try:
        trainer.fit()
        if ctx.is_main:
            results = trainer.evaluate_best(("val", "test"))
            print(format_metrics_table(results))
            if config.train.save_checkpoints:
                print(f"metrics: {trainer.checkpoint_dir / 'metrics.json'}")
        distributed.shutdown()
    except KeyboardInterrupt:
        if ctx.is_main:
            print(f"\ninterrupted: {resume_hint(trainer)}", file=sys.stderr, flush=True)
        return 130
    except (dist.DistError, RuntimeError) as err:
        if not ctx.enabled or not _is_lost_peer(err):
            raise
        # no shutdown: destroying a broken group can block; the process exit frees it
        print(f"error: {distributed.peer_lost_message(err)}", file=sys.stderr, flush=True)
        return 1
    return 0


def resume_hint(trainer: Trainer) -> str:
    """What an interrupted run left and how to continue it."""
    last = trainer.checkpoint_dir / "last.pt"
    if not last.is_file():
        return "no checkpoint was written yet; the same command starts the run again"
    return (f"{last} holds the run up to its last checkpoint; the same command (with "
            f"--run-name {trainer.config.name}) resumes it from there")


def _is_lost_peer(err: BaseException) -> bool:
    """A collective broken because another rank went away (gloo/nccl report it variously)."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return any(word in text for word in ("connection", "gloo", "nccl", "timed out", "peer"))


def main(argv: list[str] | None = None) -> None:
    """`cliptune-train`: `run` with user errors printed (exit 2), never a traceback."""
    run_cli(lambda: run(argv))
