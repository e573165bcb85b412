"""Tune CLIP's hyperparameters with Optuna: `python src/optimize.py --trials 50`.

Each trial trains a short run (TensorBoard: runs/<study>/trial_<n>/), reports the
validation metric every epoch and may be pruned. Reports are rewritten after every
trial in optuna-results/<study>/ (report.md, trials.csv, best_config.yaml, plots);
the best trial's checkpoint is kept as checkpoints/<study>/best.pt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cliptune.cli_common import add_data_args, add_set_arg, apply_data_args, run_cli
from cliptune.config import RunConfig, apply_overrides, load_config, set_value
from cliptune.hpo.driver import StudySettings, run_study
from cliptune.hpo.search_space import load_search_space
from cliptune.hpo.study import METRICS, PRUNERS, SAMPLERS

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
DEFAULTS = StudySettings()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study = parser.add_argument_group("study")
    study.add_argument("--trials", type=int, default=DEFAULTS.trials,
                       help="trials to add to the study (0: only reports / --retrain-best)")
    study.add_argument("--study-name", default=DEFAULTS.study_name,
                       help="an existing study of this name is continued")
    study.add_argument("--storage", metavar="URL|PATH",
                       help="journal file (default optuna-results/<study>/study.journal) or a "
                            "database URL (postgresql://, mysql://, sqlite:///) for several machines")
    study.add_argument("--workers", type=int, default=DEFAULTS.workers,
                       help="worker processes on this machine sharing the study")
    study.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="stop starting trials after this long")
    study.add_argument("--sampler", choices=SAMPLERS, default=DEFAULTS.sampler)
    study.add_argument("--pruner", choices=PRUNERS, default=DEFAULTS.pruner)
    study.add_argument("--patience", type=int, metavar="EPOCHS",
                       help="also prune trials that have not improved for this many epochs")
    study.add_argument("--metric", choices=tuple(METRICS), default=DEFAULTS.metric,
                       help="objective: best val_loss (minimized) or best rsum (maximized)")
    study.add_argument("--search-space", default=str(EXPERIMENTS / "search_space.yaml"),
                       metavar="FILE", help="search space YAML")
    study.add_argument("--results-dir", default=DEFAULTS.results_dir, metavar="DIR",
                       help="where optuna-results/<study>/ reports go")
    study.add_argument("--retrain-best", action="store_true",
                       help="afterwards retrain the best configuration (--epochs, else the "
                            "per-trial budget) and evaluate it on the test split")
    study.add_argument("--quiet", action="store_true", help="no progress bar or trial lines")
    run = parser.add_argument_group("trials")
    run.add_argument("--config", default=str(EXPERIMENTS / "hpo.yaml"), metavar="FILE",
                     help="base experiment every trial starts from")
    run.add_argument("--epochs", type=int, help="epochs per trial (the pruning budget)")
    run.add_argument("--max-samples", type=int, help="cap on training images per trial")
    run.add_argument("--seed", type=int, help="seed of the trials and of the sampler")
    add_data_args(parser)
    add_set_arg(parser)
    return parser.parse_args(argv)


def build_base_config(args: argparse.Namespace) -> RunConfig:
    """Base experiment: --config, then the data flags, --max-samples, --seed, --set."""
    config = load_config(args.config)
    apply_data_args(config, args)
    if args.max_samples is not None:
        set_value(config, "data.max_samples", args.max_samples)
    if args.seed is not None:
        set_value(config, "seed", args.seed)
    return apply_overrides(config, args.set)


def build_settings(args: argparse.Namespace, config: RunConfig) -> StudySettings:
    """Study settings from the flags."""
    return StudySettings(
        study_name=args.study_name, trials=args.trials, storage=args.storage,
        workers=args.workers, timeout=args.timeout, sampler=args.sampler, pruner=args.pruner,
        patience=args.patience, metric=args.metric, epochs=args.epochs, seed=config.seed,
        results_dir=args.results_dir, retrain_best=args.retrain_best,
        show_progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = build_base_config(args)
    settings = build_settings(args, config)
    outcome = run_study(settings, config, load_search_space(args.search_space))
    s = outcome.summary
    print(f"study {outcome.study_name!r}: {s.complete} complete, {s.pruned} pruned, "
          f"{s.failed} failed; pruning saved {100 * s.saved_fraction:.0f}% of the epochs")
    if outcome.best_trial is not None:
        print(f"best {settings.metric} = {outcome.best_value:.4f} (trial {outcome.best_trial})")
    if outcome.retrain is not None:
        test = outcome.retrain["test"]
        print(f"retrained best: test rsum {test['rsum']:.1f}, test loss {test['loss']:.4f}")
    print(f"report: {outcome.out_dir / 'report.md'}")
    for error in outcome.worker_errors:
        print(f"error: {error}")
    if outcome.interrupted:
        print("interrupted: the running trial(s) are marked failed; the same command "
              "continues the study")
        return 130
    return 1 if outcome.worker_errors else 0


if __name__ == "__main__":
    run_cli(main)
