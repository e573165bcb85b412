"""Study reports in `optuna-results/<study>/`, rewritten after every finished trial.

Cheap files (CSV, JSON, text, YAML, report.md) are rewritten each time; the plots
are costlier (a few seconds, ~5 MB of HTML each) and the driver asks for them less
often (see `StudyReporter`). Every file is written to a temporary name and moved in
place, so a crash never leaves half a report. best_results.json, best_config.yaml and
the checkpoint best_results.json names are always of the same trial, the study-wide
best (see `best_checkpoint`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from cliptune.config import RunConfig, config_from_dict, dump_config
from cliptune.hpo.baseline import baseline_trial
from cliptune.hpo.best_checkpoint import ARTIFACT_ATTR, local_best_checkpoint, study_checkpoint_dir
from cliptune.hpo.importances import all_importances, importance_evaluator
from cliptune.hpo.plots import write_plots
from cliptune.hpo.report_markdown import PLOTS_DIR, report_markdown
from cliptune.hpo.search_space import SearchSpace
from cliptune.hpo.study import METRICS
from cliptune.hpo.time_limit import best_trial, is_feasible

RETRAIN_FILE = "retrain_results.json"
PLOT_INTERVAL_S = 60.0  # at most one plot rewrite per minute while the study runs


@dataclass
class ReportContext:
    """What the reports need to know beyond the study itself."""

    study_name: str
    out_dir: Path  # optuna-results/<study>
    metric: str  # val_loss | rsum
    budget: int  # epochs per trial
    runs_dir: str = "runs"
    checkpoints_dir: str = "checkpoints"
    storage_label: str = ""  # what optuna-dashboard is pointed at (no password)
    search_space: list[str] = field(default_factory=list)  # describe() lines
    settings: dict[str, Any] = field(default_factory=dict)  # sampler, pruner, ...
    target: RunConfig | None = None  # the experiment tuned; best_config.yaml = target + params
    space: SearchSpace | None = None  # applies a trial's params to the target
    fidelity: str = ""  # the trials' fidelity against the target's, in words
    notes: list[str] = field(default_factory=list)  # shown at the top of report.md
    artifact_store: Any = None  # holds the checkpoints of trials that were the best
    max_train_seconds: float | None = None  # the target's training time limit (None: none)


@dataclass
class StudySummary:
    """Counts and budget bookkeeping of a study."""

    complete: int
    pruned: int
    failed: int
    running: int
    epochs_run: int  # by complete and pruned trials
    epochs_unpruned: int  # what those trials would have run without pruning
    wall_time_s: float  # first trial start -> last trial end
    trial_time_s: float  # sum of trial durations

    @property
    def epochs_saved(self) -> int:
        """Epochs the pruned trials did not run."""
        return self.epochs_unpruned - self.epochs_run

    @property
    def saved_fraction(self) -> float:
        """Share of the unpruned epoch budget that pruning saved (0..1)."""
        return self.epochs_saved / self.epochs_unpruned if self.epochs_unpruned else 0.0


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def summarize(study: optuna.Study, budget: int) -> StudySummary:
    """State counts, epochs run versus the unpruned budget, and time spent."""
    trials = study.get_trials(deepcopy=False)
    by_state = {state: [t for t in trials if t.state == state] for state in TrialState}
    finished = by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return StudySummary(
        complete=len(by_state[TrialState.COMPLETE]),
        pruned=len(by_state[TrialState.PRUNED]),
        failed=len(by_state[TrialState.FAIL]),
        running=len(by_state[TrialState.RUNNING]),
        epochs_run=sum(len(t.intermediate_values) for t in finished),
        epochs_unpruned=budget * len(finished),
        wall_time_s=(max(ends) - min(starts)).total_seconds() if starts and ends else 0.0,
        trial_time_s=sum(t.duration.total_seconds() for t in trials if t.duration),
    )


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: Optuna's columns plus epochs run, last value, metrics, failure reason."""
    trials = study.get_trials(deepcopy=False)
    frame = study.trials_dataframe(
        attrs=("number", "value", "state", "datetime_start", "datetime_complete", "duration",
               "params")
    )
    if frame.empty:
        return pd.DataFrame(columns=["number", "value", "state", "epochs"])
    frame["duration_s"] = [t.duration.total_seconds() if t.duration else math.nan for t in trials]
    frame["epochs"] = [len(t.intermediate_values) for t in trials]
    frame["last_value"] = [
        t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan
        for t in trials
    ]
    frame["best_epoch"] = [t.user_attrs.get("best_epoch") for t in trials]
    metric_keys = sorted({k for t in trials for k in t.user_attrs.get("metrics", {})})
    for key in metric_keys:
        frame[key] = [t.user_attrs.get("metrics", {}).get(key) for t in trials]
    for key in ("run_seconds", "epoch_seconds", "projected_train_seconds"):
        frame[key] = [t.user_attrs.get(key, math.nan) for t in trials]
    if any(t.constraints for t in trials):
        frame["feasible"] = [is_feasible(t) if t.constraints else None for t in trials]
    frame["fail_reason"] = [t.user_attrs.get("fail_reason", "") for t in trials]
    frame["run_dir"] = [t.user_attrs.get("run_dir", "") for t in trials]
    return frame


def best_config(trial: FrozenTrial, ctx: ReportContext) -> RunConfig:
    """The trial's parameters on the target experiment, at the target's full fidelity
    (all its data, its epochs), named `<study>-best`. Without a target (reports of a
    foreign study): the trial's own config."""
    if ctx.target is not None and ctx.space is not None:
        config = ctx.space.apply(ctx.target, trial.params)
    else:
        data = dict(trial.user_attrs["config"])
        data["runs_dir"], data["checkpoints_dir"] = ctx.runs_dir, ctx.checkpoints_dir
        config = config_from_dict(data)
    config.name = f"{ctx.study_name}-best"
    return config


def best_config_yaml(trial: FrozenTrial, ctx: ReportContext) -> str:
    """best_config.yaml: an experiment file that `src/main.py --config` retrains."""
    header = (
        f"# Best configuration of Optuna study {ctx.study_name!r} (trial {trial.number}, "
        f"{ctx.metric} = {trial.value:.6g}).\n"
        "# The target experiment with the trial's parameters, at the target's full fidelity.\n"
        f"# Train: python src/main.py --config {ctx.out_dir / 'best_config.yaml'}\n"
    )
    return header + dump_config(best_config(trial, ctx))


def retrain_results(ctx: ReportContext) -> dict | None:
    """The content of retrain_results.json, if the study was retrained."""
    path = ctx.out_dir / RETRAIN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def best_results(study: optuna.Study, trial: FrozenTrial, ctx: ReportContext,
                 checkpoint: Path | None = None, checkpoint_note: str = "") -> dict:
    """The content of best_results.json; `checkpoint`: trial `trial`'s checkpoint on this
    machine (None: not here, `checkpoint_note` says why)."""
    return {
        "study": ctx.study_name,
        "metric": ctx.metric,
        "direction": METRICS[ctx.metric],
        "value": trial.value,
        "trial": trial.number,
        "params": trial.params,
        "metrics": trial.user_attrs.get("metrics", {}),
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "epochs": len(trial.intermediate_values),
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
        "run_seconds": trial.user_attrs.get("run_seconds"),
        "projected_train_seconds": trial.user_attrs.get("projected_train_seconds"),
        "max_train_seconds": ctx.max_train_seconds,
        "feasible": is_feasible(trial),  # within the time limit (True without one)
        "run_dir": trial.user_attrs.get("run_dir"),
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "checkpoint_artifact": trial.user_attrs.get(ARTIFACT_ATTR),
        "checkpoint_note": checkpoint_note,
        "retrain": retrain_results(ctx),
    }


def best_hyperparameters_text(trial: FrozenTrial, ctx: ReportContext) -> str:
    """The content of best_hyperparameters.txt: one `name = value` line per parameter."""
    lines = [
        f"# Best hyperparameters of study {ctx.study_name} "
        f"(trial {trial.number}, {ctx.metric} = {trial.value:.6g})",
    ]
    width = max((len(name) for name in trial.params), default=0)
    for name, value in trial.params.items():
        lines.append(f"{name.ljust(width)} = {value!r}")
    lines.append(f"# search space: {'; '.join(ctx.search_space)}" if ctx.search_space else "")
    lines.append(f"# retrain: python src/main.py --config {ctx.out_dir / 'best_config.yaml'}")
    return "\n".join(line for line in lines if line) + "\n"


class StudyReporter:
    """Rewrites the report files; plots at most every `plot_interval_s` seconds.

    The interval starts at creation: a study's first minutes get cheap files only,
    and `write(study, plots=True)` at the end draws everything.
    """

    def __init__(self, ctx: ReportContext, plot_interval_s: float = PLOT_INTERVAL_S):
        self.ctx = ctx
        self.plot_interval_s = plot_interval_s
        self._last_plot = time.monotonic()
        self._plots: dict[str, list[str] | str] = {}

    def write(self, study: optuna.Study, *, plots: bool | None = None) -> None:
        """Rewrite all files; `plots` True/False forces or skips the plots (None: by time)."""
        ctx = self.ctx
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        if plots is None:
            plots = time.monotonic() - self._last_plot >= self.plot_interval_s
        if plots:
            self._plots = write_plots(study, ctx.out_dir / PLOTS_DIR, importance_evaluator(),
                                      ctx.metric)
            self._last_plot = time.monotonic()
        frame = trials_frame(study)
        tmp = ctx.out_dir / ".trials.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, ctx.out_dir / "trials.csv")
        best = best_trial(study)
        record = None
        if best is not None:
            checkpoint, note = local_best_checkpoint(
                best, study_checkpoint_dir(ctx.checkpoints_dir, ctx.study_name),
                ctx.artifact_store)
            record = best_results(study, best, ctx, checkpoint, note)
            write_text_atomic(ctx.out_dir / "best_params.json",
                              json.dumps(best.params, indent=2) + "\n")
            write_text_atomic(ctx.out_dir / "best_hyperparameters.txt",
                              best_hyperparameters_text(best, ctx))
            write_text_atomic(ctx.out_dir / "best_results.json",
                              json.dumps(record, indent=2) + "\n")
            write_text_atomic(ctx.out_dir / "best_config.yaml", best_config_yaml(best, ctx))
        summary = summarize(study, ctx.budget)
        write_text_atomic(
            ctx.out_dir / "report.md",
            report_markdown(study, ctx, summary, all_importances(study), self._plots, best,
                            baseline_trial(study), retrain_results(ctx), record),
        )

    def write_safely(self, study: optuna.Study, *, plots: bool | None = None) -> None:
        """`write`, but an error is printed instead of raised: reports never stop a study."""
        try:
            self.write(study, plots=plots)
        except Exception as err:  # noqa: BLE001
            print(f"warning: report not (fully) written: {type(err).__name__}: {err}",
                  file=sys.stderr, flush=True)
