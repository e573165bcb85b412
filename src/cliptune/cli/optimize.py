"""Tune CLIP's hyperparameters with Optuna: `python src/optimize.py --trials 50`.

A study tunes a target experiment (experiments/default.yaml) at a reduced fidelity
(experiments/hpo.yaml: data subset and epochs per trial). Each trial trains a short
run (TensorBoard: runs/<study>/trial_<n>/), reports the validation metric every
epoch and may be pruned; the target's own settings are the first trial. Reports are
rewritten after every trial in optuna-results/<study>/ (report.md, trials.csv,
best_config.yaml = the target with the best parameters at full fidelity, plots).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from cliptune.cli.common import DATA_FLAGS, add_data_args, add_set_arg, apply_data_args, run_cli
from cliptune.config import apply_overrides
from cliptune.errors import ConfigError
from cliptune.hpo.definition import DEFAULT_METRIC, StudyDefinition, StudySettings, load_plan
from cliptune.hpo.driver import resolve_definition, run_study
from cliptune.hpo.fidelity_check import check_fidelity, summary_lines
from cliptune.hpo.retrain import comparison_lines
from cliptune.hpo.search_space import load_search_space
from cliptune.hpo.study import METRICS, PRUNERS, SAMPLERS, Heartbeat
from cliptune.hpo.warm_start import parse_warm_start
from cliptune.resources import default_experiment

DEFAULTS = StudySettings()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    study = parser.add_argument_group("study")
    study.add_argument("--trials", type=int, default=DEFAULTS.trials,
                       help="trials this driver adds (0: only reports / --retrain-best)")
    study.add_argument("--max-trials", type=int, metavar="N",
                       help="total trials of the study over all drivers sharing it")
    study.add_argument("--study-name", default=DEFAULTS.study_name,
                       help="an existing study of this name is continued")
    study.add_argument("--storage", metavar="URL|PATH",
                       help="journal file (default optuna-results/<study>/study.journal) or a "
                            "database URL (postgresql://user:pass@host/db) for several machines")
    study.add_argument("--artifact-store", metavar="DIR|s3://BUCKET|gs://BUCKET",
                       help="where the best trials' checkpoints are stored (default "
                            "optuna-results/<study>/artifacts); drivers on several machines "
                            "share one: a shared folder, S3 (boto3) or GCS")
    study.add_argument("--workers", type=int, default=DEFAULTS.workers,
                       help="worker processes on this machine (worker i uses GPU i mod #GPUs)")
    study.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="stop starting trials after this long")
    study.add_argument("--sampler", choices=SAMPLERS, default=DEFAULTS.sampler)
    study.add_argument("--pruner", choices=PRUNERS, default=DEFAULTS.pruner,
                       help="auto (default): hyperband whose first rung is the earliest epoch "
                            "the study's recorded fidelity check (--check-fidelity) trusts; "
                            "without a check, hyperband from --min-epochs")
    study.add_argument("--patience", type=int, metavar="EPOCHS",
                       help="also prune trials that have not improved for this many epochs")
    study.add_argument("--min-epochs", type=int, default=DEFAULTS.min_epochs, metavar="EPOCHS",
                       help="the pruner's first rung: no trial is judged before this epoch "
                            "(default 1; --pruner auto moves it later where the study's "
                            "fidelity check finds the early rungs rank poorly)")
    study.add_argument("--warm-start", metavar="STUDY[,STUDY]",
                       help="first run the best configuration(s) of earlier studies: NAME (in "
                            "this study's storage or --results-dir) or NAME@STORAGE (a journal "
                            "file or database URL); parameters outside this space are dropped")
    study.add_argument("--warm-start-top", type=int, default=DEFAULTS.warm_start_top,
                       metavar="K", help="--warm-start: the K best trials of each study")
    study.add_argument("--metric", choices=tuple(METRICS),
                       help="objective: best val_loss (minimized, the default) or best rsum "
                            "(maximized); a joined study keeps its own")
    study.add_argument("--search-space", metavar="FILE",
                       help="search space YAML (default: experiments/search_space.yaml on a CPU, "
                            "experiments/gpu-search-space.yaml on a GPU)")
    study.add_argument("--results-dir", default=DEFAULTS.results_dir, metavar="DIR",
                       help="where optuna-results/<study>/ reports go")
    study.add_argument("--allow-changes", action="store_true",
                       help="continue a study although flags you pass set its search space, "
                            "target, fidelity or metric to other values than it was created with")
    study.add_argument("--heartbeat", type=int, metavar="SECONDS",
                       default=DEFAULTS.heartbeat.interval_s,
                       help="database storages: liveness beat of running trials; a trial "
                            "silent for 3 beats is failed and retried")
    study.add_argument("--retrain-best", action="store_true",
                       help="afterwards train the best and the base config at full fidelity "
                            "(--seeds each) and evaluate them on the test split")
    study.add_argument("--seeds", type=int, default=DEFAULTS.seeds,
                       help="--retrain-best: seeds per configuration")
    study.add_argument("--check-fidelity", type=int, metavar="K",
                       help="instead of trials: train K configurations of the space at the "
                            "trial and at the full fidelity and report how well the first ranks "
                            "the second (optuna-results/<study>/fidelity_check.md)")
    study.add_argument("--quiet", action="store_true", help="no progress bar or trial lines")
    run = parser.add_argument_group("target and fidelity")
    run.add_argument("--study-config", metavar="FILE",
                     help="study file: the target experiment and the trials' fidelity (default: "
                          "experiments/hpo.yaml on a CPU, experiments/gpu-hpo.yaml on a GPU)")
    run.add_argument("--config", metavar="FILE",
                     help="target experiment to tune (default: the study file's target)")
    run.add_argument("--epochs", type=int, help="epochs per trial (the pruning budget)")
    run.add_argument("--max-samples", type=int, help="training images per trial")
    run.add_argument("--max-eval-samples", type=int, help="validation images per trial")
    run.add_argument("--max-train-seconds", type=float, metavar="S",
                     help="the target's training time limit: trials whose parameters would "
                          "train the target longer (projected from their first epoch) are "
                          "infeasible, and the best trial is a feasible one (0: no limit; "
                          "default: the study file's max_train_seconds)")
    run.add_argument("--seed", type=int,
                     help="this driver's sampler seed (default: the target's seed); drivers "
                          "sharing a study may each pass their own. The trials' training seed "
                          "is the target's: --set seed=N")
    add_data_args(parser)
    add_set_arg(parser)
    args = parser.parse_args(argv)
    args.given = given_keys(args)  # before build_plan fills in the default files
    return args


def given_keys(args: argparse.Namespace) -> frozenset[str]:
    """What the command line sets of a study's definition (before the defaults fill
    in): a joined study takes the rest from what it recorded."""
    given = {"target"} if args.config or args.study_config else set()
    given |= {"fidelity"} if args.study_config else set()
    given |= {"search_space"} if args.search_space else set()
    given |= {"metric"} if args.metric else set()
    given |= {f"target.{key}" for dest, key in DATA_FLAGS.items() if getattr(args, dest)}
    given |= {f"target.{item.split('=', 1)[0].strip()}" for item in args.set}
    given |= {f"fidelity.{name}" for name in ("epochs", "max_samples", "max_eval_samples")
              if getattr(args, name) is not None}
    given |= {"limits"} if args.study_config else set()
    given |= {"limits.max_train_seconds"} if args.max_train_seconds is not None else set()
    return frozenset(given)


def build_plan(args: argparse.Namespace) -> StudyDefinition:
    """The command line's study definition: the study file (its target or --config), the
    data flags and --set on the target, the fidelity flags, the search space and the
    metric. Without --study-config (--search-space) the hardware chooses the shipped one."""
    if args.study_config is None:
        choice = default_experiment("hpo", data=args.data)
        print(choice.line().replace("--config FILE", "--study-config FILE"), flush=True)
        args.study_config = str(choice.path)
    if args.search_space is None:
        args.search_space = str(default_experiment("search-space", data=args.data).path)
    definition = load_plan(args.study_config, args.config,
                           space=load_search_space(args.search_space),
                           metric=args.metric or DEFAULT_METRIC)
    target = definition.target
    apply_data_args(target, args)
    apply_overrides(target, args.set)
    flags = {name: getattr(args, name) for name in ("epochs", "max_samples", "max_eval_samples")}
    fidelity = replace(definition.fidelity,
                       **{name: value for name, value in flags.items() if value is not None})
    limit = definition.max_train_seconds
    if args.max_train_seconds is not None:
        if args.max_train_seconds < 0:
            raise ConfigError(f"--max-train-seconds must be >= 0 (0: no limit), got "
                              f"{args.max_train_seconds:g}")
        limit = args.max_train_seconds or None
    return replace(definition, target=target, fidelity=fidelity, max_train_seconds=limit)


def build_settings(args: argparse.Namespace) -> StudySettings:
    """Study settings from the flags."""
    heartbeat = Heartbeat(interval_s=args.heartbeat, grace_s=3 * args.heartbeat)
    return StudySettings(
        study_name=args.study_name, trials=args.trials, max_trials=args.max_trials,
        storage=args.storage, artifact_store=args.artifact_store, workers=args.workers,
        timeout=args.timeout, sampler=args.sampler,
        pruner=args.pruner, patience=args.patience, min_epochs=args.min_epochs,
        warm_start=parse_warm_start(args.warm_start), warm_start_top=args.warm_start_top,
        results_dir=args.results_dir, allow_changes=args.allow_changes,
        retrain_best=args.retrain_best, seeds=args.seeds, show_progress=not args.quiet,
        heartbeat=heartbeat, seed=args.seed, given=args.given,
    )


def run(argv: list[str] | None = None) -> int:
    """Parse `argv` and do the work; user errors raise `CliptuneError`. Returns the exit code."""
    args = parse_args(argv)
    definition = build_plan(args)
    settings = build_settings(args)
    if args.check_fidelity is not None:
        definition, notes = resolve_definition(settings, definition)
        for note in notes:
            print(f"note: {note}", flush=True)
        payload = check_fidelity(settings, definition, args.check_fidelity)
        print("\n".join(summary_lines(payload)))
        print(f"report: {Path(settings.results_dir) / settings.study_name / 'fidelity_check.md'}")
        return 0
    outcome = run_study(settings, definition)
    s = outcome.summary
    print(f"study {outcome.study_name!r}: {s.complete} complete, {s.pruned} pruned, "
          f"{s.failed} failed; pruning saved {100 * s.saved_fraction:.0f}% of the epochs")
    if outcome.best_trial is not None:
        print(f"best {outcome.metric} = {outcome.best_value:.4f} (trial {outcome.best_trial})")
    print(f"verdict: {outcome.verdict}")
    if outcome.retrain is not None:
        print("\n".join(comparison_lines(outcome.retrain)))
    print(f"report: {outcome.out_dir / 'report.md'}")
    for message in outcome.worker_messages:
        print(f"worker: {message}")
    for error in outcome.worker_errors:
        print(f"error: {error}")
    if outcome.interrupted:
        print(f"interrupted: the running trial(s) are marked failed; {outcome.trials_left} "
              f"of the {settings.trials} trials asked for did not finish: the same command "
              f"with --trials {outcome.trials_left} runs those and continues the study")
        return 130
    return 1 if outcome.worker_errors else 0


def main(argv: list[str] | None = None) -> None:
    """`cliptune-optimize`: `run` with user errors printed (exit 2), never a traceback."""
    run_cli(lambda: run(argv))
