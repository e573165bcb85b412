"""Study reports in `optuna-results/<study>/`, rewritten after every finished trial.

Cheap files (CSV, JSON, text, YAML, report.md) are rewritten each time; the plots
are costlier (a few seconds, ~5 MB of HTML each) and the driver asks for them less
often (see `StudyReporter`). Every file is written to a temporary name and moved in
place, so a crash never leaves half a report.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from cliptune.config import RunConfig, config_from_dict, dump_config
from cliptune.hpo.plots import PLOTS, write_plots
from cliptune.hpo.study import METRICS

RETRAIN_FILE = "retrain_results.json"
PLOTS_DIR = "plots"
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


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or None while there is none."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    return study.best_trial


def importance_evaluator() -> optuna.importance.BaseImportanceEvaluator:
    """PED-ANOVA (numpy only), set explicitly rather than relying on Optuna's default."""
    return optuna.importance.PedAnovaImportanceEvaluator()


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Importances of the searched parameters, or ({}, note) when they cannot be had."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return {}, f"importances need at least 2 complete trials (have {len(complete)})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importances = optuna.importance.get_param_importances(
            study, evaluator=importance_evaluator()
        )
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return importances, (" ".join(notes) or None)


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
    frame["fail_reason"] = [t.user_attrs.get("fail_reason", "") for t in trials]
    frame["run_dir"] = [t.user_attrs.get("run_dir", "") for t in trials]
    return frame


def best_config(trial: FrozenTrial, ctx: ReportContext) -> RunConfig:
    """The best trial's full config as its own experiment (`<study>-best`, the study's
    folders and per-trial epoch budget)."""
    data = dict(trial.user_attrs["config"])
    data["name"] = f"{ctx.study_name}-best"
    data["runs_dir"] = ctx.runs_dir
    data["checkpoints_dir"] = ctx.checkpoints_dir
    return config_from_dict(data)


def best_config_yaml(trial: FrozenTrial, ctx: ReportContext) -> str:
    """best_config.yaml: an experiment file that `src/main.py --config` retrains."""
    header = (
        f"# Best configuration of Optuna study {ctx.study_name!r} (trial {trial.number}, "
        f"{ctx.metric} = {trial.value:.6g}).\n"
        f"# Retrain: python src/main.py --config {ctx.out_dir / 'best_config.yaml'}\n"
    )
    return header + dump_config(best_config(trial, ctx))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _retrain_results(ctx: ReportContext) -> dict | None:
    path = ctx.out_dir / RETRAIN_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def best_results(study: optuna.Study, trial: FrozenTrial, ctx: ReportContext) -> dict:
    """The content of best_results.json."""
    checkpoint = Path(ctx.checkpoints_dir) / ctx.study_name / "best.pt"
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
        "run_dir": trial.user_attrs.get("run_dir"),
        "checkpoint": str(checkpoint) if checkpoint.is_file() else None,
        "retrain": _retrain_results(ctx),
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


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _metrics_table(results: dict[str, dict[str, float]]) -> list[str]:
    """Recalls in percent with one decimal, R-sum with one, loss with four."""
    recalls = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")

    def cell(metrics: dict[str, float], key: str) -> str:
        if key not in metrics:
            return "-"
        if key in recalls:
            return f"{100 * metrics[key]:.1f}"
        return f"{metrics[key]:.4f}" if key == "loss" else f"{metrics[key]:.1f}"

    keys = (*recalls, "rsum", "loss")
    return _table(["split", *keys], [[split] + [cell(m, k) for k in keys]
                                     for split, m in results.items()])


def report_markdown(
    study: optuna.Study,
    ctx: ReportContext,
    summary: StudySummary,
    importances: tuple[dict[str, float], str | None],
    plots: dict[str, list[str] | str],
) -> str:
    """The text of report.md."""
    direction = METRICS[ctx.metric]
    out = [f"# Optuna study `{ctx.study_name}`", ""]
    settings = ", ".join(f"{k} {v}" for k, v in ctx.settings.items())
    out += [
        f"Objective: **{direction} {ctx.metric}** (the best validation epoch of each trial), "
        f"{ctx.budget} epochs per trial" + (f"; {settings}" if settings else "") + ".",
        "",
        "## Summary",
        "",
        *_table(
            ["trials", "complete", "pruned", "failed", "running"],
            [[str(len(study.get_trials(deepcopy=False))), str(summary.complete),
              str(summary.pruned), str(summary.failed), str(summary.running)]],
        ),
        "",
        f"- Wall time: {summary.wall_time_s / 60:.1f} min (first trial start to last trial end); "
        f"time in trials: {summary.trial_time_s / 60:.1f} min.",
        f"- Epochs: {summary.epochs_run} run of {summary.epochs_unpruned} without pruning; "
        f"pruning saved {summary.epochs_saved} epochs ({100 * summary.saved_fraction:.0f}%).",
    ]
    if ctx.search_space:
        out += ["", "Search space:", "", *(f"- `{line}`" for line in ctx.search_space)]
    best = best_trial(study)
    out += ["", "## Best trial", ""]
    if best is None:
        out.append("No trial has completed yet.")
    else:
        seconds = best.duration.total_seconds() if best.duration else 0.0
        out += [
            f"Trial **{best.number}**: {ctx.metric} = **{best.value:.4f}** at epoch "
            f"{best.user_attrs.get('best_epoch', '?')} ({seconds:.0f} s).",
            "",
            *_table(["parameter", "value"], [[k, _fmt(v)] for k, v in best.params.items()]),
            "",
            "Validation metrics at its best epoch (recalls in %):",
            "",
            *_metrics_table({"val": {k[4:]: v for k, v in best.user_attrs.get("metrics", {}).items()}}),
            "",
            f"Checkpoint: `{Path(ctx.checkpoints_dir) / ctx.study_name / 'best.pt'}`; "
            f"TensorBoard run: `{best.user_attrs.get('run_dir', '')}`; full config: "
            "[best_config.yaml](best_config.yaml).",
        ]
    retrain = _retrain_results(ctx)
    if retrain is not None:
        out += [
            "", "## Best configuration retrained", "",
            f"{retrain.get('epochs', '?')} epochs, checkpoint `{retrain.get('checkpoint', '')}`. "
            "The study itself only saw the validation split; the test split is used here only.",
            "", *_metrics_table({s: retrain[s] for s in ("val", "test") if s in retrain}),
        ]
    out += ["", "## Top 10 trials", ""]
    complete = sorted(
        (t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
        key=lambda t: t.value, reverse=direction == "maximize",
    )[:10]
    names = sorted({name for t in complete for name in t.params})
    out += _table(
        ["trial", ctx.metric, "best epoch", "seconds", *names],
        [[str(t.number), f"{t.value:.4f}", str(t.user_attrs.get("best_epoch", "")),
          f"{t.duration.total_seconds():.0f}" if t.duration else "",
          *(_fmt(t.params.get(n, "")) for n in names)] for t in complete],
    ) if complete else ["No complete trials yet."]
    values, note = importances
    out += ["", "## Parameter importances (PED-ANOVA)", ""]
    if values:
        out += _table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in values.items()])
    if note:
        out += ["", f"Note: {note}"]
    out += ["", "## Plots", ""]
    for plot in PLOTS:
        files = plots.get(plot.name)
        if isinstance(files, list):
            links = ", ".join(f"[{Path(f).suffix[1:]}]({PLOTS_DIR}/{f})" for f in files)
            out.append(f"- {plot.title}: {links}")
            if len(files) > 1:
                out.append(f"\n  ![{plot.title}]({PLOTS_DIR}/{files[1]})")
        elif isinstance(files, str):
            out.append(f"- {plot.title}: not drawn ({files})")
        else:
            out.append(f"- {plot.title}: drawn at the next plot refresh")
    out += [
        "", "## Next steps", "", "```",
        "# retrain the best configuration (full epoch budget), then evaluate on test:",
        f"python src/main.py --config {ctx.out_dir / 'best_config.yaml'}",
        f"python src/optimize.py --study-name {ctx.study_name} --trials 0 --retrain-best",
        "# continue the study with more trials:",
        f"python src/optimize.py --study-name {ctx.study_name} --trials 20",
        "# every trial's curves and hparams (HParams tab):",
        f"tensorboard --logdir {Path(ctx.runs_dir) / ctx.study_name}",
        "# browse the study (pip install optuna-dashboard):",
        f"optuna-dashboard {ctx.storage_label}",
        "```", "",
    ]
    return "\n".join(out)


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
            self._plots = write_plots(study, ctx.out_dir / PLOTS_DIR, importance_evaluator())
            self._last_plot = time.monotonic()
        frame = trials_frame(study)
        tmp = ctx.out_dir / ".trials.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, ctx.out_dir / "trials.csv")
        best = best_trial(study)
        if best is not None:
            write_text_atomic(ctx.out_dir / "best_params.json",
                              json.dumps(best.params, indent=2) + "\n")
            write_text_atomic(ctx.out_dir / "best_hyperparameters.txt",
                              best_hyperparameters_text(best, ctx))
            write_text_atomic(ctx.out_dir / "best_results.json",
                              json.dumps(best_results(study, best, ctx), indent=2) + "\n")
            write_text_atomic(ctx.out_dir / "best_config.yaml", best_config_yaml(best, ctx))
        summary = summarize(study, ctx.budget)
        write_text_atomic(
            ctx.out_dir / "report.md",
            report_markdown(study, ctx, summary, param_importances(study), self._plots),
        )
