"""Study reports in `optuna-results/<study>/`, rewritten after every finished trial: the one
module that knows the report's files (trials.csv, best_*.json/.txt/.yaml, report.md and
its text, plots/ through `plots.py`).

Cheap files (CSV, JSON, text, YAML, report.md) are rewritten each time; the plots
are costlier (a few seconds, ~5 MB of HTML each) and the driver asks for them less
often (see `StudyReporter`). Every file is written to a temporary name and moved in
place, so a crash never leaves half a report. best_results.json, best_config.yaml and
the checkpoint best_results.json names are always of the same trial, the study-wide
best (see `results`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from cliptune.config import RunConfig, dump_config
from cliptune.files import atomic_path, write_atomic
from cliptune.hpo.definition import PLOT_INTERVAL_S, StudyDefinition
from cliptune.hpo.report.importances import Importances, all_importances, importance_evaluator
from cliptune.hpo.report.plots import PLOTS, write_plots
from cliptune.hpo.results import (
    ARTIFACT_ATTR,
    best_trial,
    feasibility_counts,
    is_feasible,
    local_best_checkpoint,
    ranked,
    study_checkpoint_dir,
)
from cliptune.hpo.search_space import baseline_trial, describe
from cliptune.hpo.study import METRICS
from cliptune.hpo.verdict import verdict
from cliptune.hpo.warm_start import warm_start_section
from cliptune.metrics import RECALLS, SCORES

RETRAIN_FILE = "retrain_results.json"
FIDELITY_CHECK = "fidelity_check"  # .json and .md, written by fidelity_check.py
PLOTS_DIR = "plots"


@dataclass
class ReportContext:
    """What the reports need to know beyond the study itself: its definition (the
    properties below read it) and where this driver keeps the study's files."""

    definition: StudyDefinition
    study_name: str
    out_dir: Path  # optuna-results/<study>
    storage_label: str = ""  # what optuna-dashboard is pointed at (no password)
    artifact_dir: str | None = None  # the artifact folder optuna-dashboard serves (not a bucket)
    settings: dict[str, Any] = field(default_factory=dict)  # sampler, pruner, ...
    notes: list[str] = field(default_factory=list)  # shown at the top of report.md
    artifact_store: Any = None  # holds the checkpoints of trials that were the best

    @property
    def metric(self) -> str:
        """The objective: val_loss | rsum."""
        return self.definition.metric

    @property
    def budget(self) -> int:
        """Epochs per trial."""
        return self.definition.budget

    @property
    def max_train_seconds(self) -> float | None:
        """The target's training time limit (None: none)."""
        return self.definition.max_train_seconds

    @property
    def runs_dir(self) -> str:
        """Where the trials' TensorBoard runs are."""
        return self.definition.trial_base.runs_dir

    @property
    def checkpoints_dir(self) -> str:
        """Where the study's best checkpoint is."""
        return self.definition.trial_base.checkpoints_dir


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
    (all its data, its epochs), named `<study>-best`."""
    config = ctx.definition.space.apply(ctx.definition.target, trial.params)
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
    space = describe(ctx.definition.space)
    lines.append(f"# search space: {'; '.join(space)}" if space else "")
    lines.append(f"# retrain: python src/main.py --config {ctx.out_dir / 'best_config.yaml'}")
    return "\n".join(line for line in lines if line) + "\n"


# ------------------------------------------------------------------ report.md

def fidelity_text(definition: StudyDefinition) -> str:
    """The trials' fidelity against the target's, in words."""
    f = definition.fidelity
    return (f"{definition.budget} epochs, {f.max_samples or 'all'} training / "
            f"{f.max_eval_samples or 'all'} validation images per trial; target "
            f"`{definition.target_path}` ({definition.target.train.epochs} epochs, all its "
            "data)")


def fmt(value: Any) -> str:
    """Floats with 4 significant digits, the rest as str."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _cell(metrics: dict[str, float], key: str) -> str:
    if key not in metrics:
        return "-"
    if key in RECALLS:
        return f"{100 * metrics[key]:.1f}"
    return f"{metrics[key]:.4f}" if key == "loss" else f"{metrics[key]:.1f}"


def metrics_table(results: dict[str, dict[str, float]]) -> list[str]:
    """Recalls in percent with one decimal, R-sum with one, loss with four."""
    return table(["split", *SCORES], [[split] + [_cell(m, k) for k in SCORES]
                                    for split, m in results.items()])


def _mean_std(config: dict, key: str) -> str:
    mean, std = config["test_mean"].get(key), config["test_std"].get(key)
    if mean is None:
        return "-"
    scale = 100 if key in RECALLS else 1
    digits = 4 if key == "loss" else 1
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def retrain_section(retrain: dict) -> list[str]:
    """Best and base config retrained at full fidelity with several seeds."""
    keys = ("rsum", "i2t_r1", "t2i_r1", "loss")
    configs = retrain["configs"]
    rows = [[name, fmt(c.get("trial", "-")), str(len(c["runs"])),
             *(_mean_std(c, k) for k in keys)] for name, c in configs.items()]
    out = ["", "## Best and base configuration at full fidelity", "",
           f"Each trained {retrain['epochs']} epochs on all the target's data with seeds "
           f"{', '.join(map(str, retrain['seeds']))}; test split (never seen by the study), "
           "mean ± standard deviation over the seeds (recalls in %).", "",
           *table(["config", "trial", "seeds", "test rsum", "i2t R@1", "t2i R@1", "test loss"],
                  rows)]
    comparison = retrain.get("comparison")
    if comparison is not None:
        best, base = configs["best"]["runs"], configs["base"]["runs"]
        out += ["", "Test rsum per seed (paired: the same seed, data order and split):", "",
                *table(["seed", "best", "base", "best - base", "minutes (best / base)"],
                       [[str(b["seed"]), f"{b['test']['rsum']:.1f}", f"{a['test']['rsum']:.1f}",
                         f"{d:+.1f}", f"{b['wall_time_s'] / 60:.1f} / {a['wall_time_s'] / 60:.1f}"]
                        for b, a, d in zip(best, base, comparison["differences"], strict=True)])]
        interval = comparison["interval_95"]
        shown = (f"[{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval
                 else "none (one seed)")
        out += ["", f"Paired difference (best - base): {comparison['mean_difference']:+.1f} "
                    f"rsum, 95% t-interval {shown}; pooled std {comparison['pooled_std']:.1f}. "
                    "Rule: better (worse) when the interval excludes 0 on that side and the "
                    "difference exceeds twice the pooled std; otherwise within the noise."]
    if "verdict" in retrain:
        out += ["", f"**{retrain['verdict']}**"]
    return out


def importance_section(figures: list[Importances]) -> list[str]:
    """Both importance figures side by side, with what each rests on."""
    out = ["", "## Parameter importances (PED-ANOVA)", ""]
    names = list(dict.fromkeys(n for f in figures for n in f.values))
    if names:
        header = ["parameter"] + [f"{f.title} ({f.trials} trials)" for f in figures]
        out += table(header, [[n] + [f"{f.values[n]:.3f}" if n in f.values else "-"
                                     for f in figures] for n in names])
    for figure in figures:
        if figure.note:
            out += ["", f"Note ({figure.title}, {figure.trials} trials): {figure.note}"]
    return out


def _baseline_lines(baseline: FrozenTrial | None, best: FrozenTrial | None, metric: str,
                    note: str) -> list[str]:
    if baseline is None:
        return [f"Baseline: none ({note})." if note else "Baseline: none."]
    if baseline.state == TrialState.COMPLETE:
        line = (f"Baseline (trial {baseline.number}, the target's own settings): {metric} = "
                f"**{baseline.value:.4f}**")
        if best is not None and best.number != baseline.number:
            line += f"; the best trial is {best.value - baseline.value:+.4f} from it"
        return [line + "."]
    return [f"Baseline (trial {baseline.number}, the target's own settings): "
            f"{baseline.state.name.lower()}."]


def _plot_lines(study: optuna.Study, plots: dict[str, list[str] | str]) -> list[str]:
    out = []
    for plot in PLOTS:
        files = plots.get(plot.name)
        if isinstance(files, list):
            links = ", ".join(f"[{Path(f).suffix[1:]}]({PLOTS_DIR}/{f})" for f in files)
            found = plot.source(study) if plot.source is not None else None
            what = f" (from {found[1]})" if found is not None else ""
            out.append(f"- {plot.title}{what}: {links}")
            if len(files) > 1:
                out.append(f"\n  ![{plot.title}]({PLOTS_DIR}/{files[1]})")
        elif isinstance(files, str):
            out.append(f"- {plot.title}: not drawn ({files})")
        else:
            out.append(f"- {plot.title}: drawn at the next plot refresh")
    return out


def time_limit_lines(study: optuna.Study, limit: float | None,
                     best: FrozenTrial | None) -> list[str]:
    """The target's time limit and how many complete trials keep to it."""
    if limit is None:
        return []
    feasible, complete = feasibility_counts(study)
    out = ["", f"Time limit: the target with a trial's parameters must train in at most "
               f"**{limit:g} s** at full fidelity (projected from the trial's first epoch on "
               f"the machine that ran it); {feasible} of {complete} complete trials keep to it."]
    if best is not None and not is_feasible(best):
        projected = best.user_attrs.get("projected_train_seconds")
        shown = f"{projected:.0f} s" if projected is not None else "unknown"
        out += ["", f"**No complete trial keeps to the time limit.** The best trial below is "
                    f"the best of those over it (projected {shown} > {limit:g} s): its "
                    "best_config.yaml trains longer than the limit."]
    return out


def _seconds(trial: FrozenTrial, key: str) -> str:
    value = trial.user_attrs.get(key)
    return "" if value is None else f"{value:.0f}"


def report_markdown(study: optuna.Study, ctx: ReportContext, summary: StudySummary,
                    importances: list[Importances], plots: dict[str, list[str] | str],
                    best: FrozenTrial | None, baseline: FrozenTrial | None,
                    retrain: dict | None, best_record: dict | None = None) -> str:
    """The text of report.md (`best_record`: best_results.json's content)."""
    direction = METRICS[ctx.metric]
    out = [f"# Optuna study `{ctx.study_name}`", ""]
    out += [f"**Verdict:** {verdict(study, ctx.metric, ctx.study_name)}", ""]
    settings = ", ".join(f"{k} {v}" for k, v in ctx.settings.items())
    out += [f"Objective: **{direction} {ctx.metric}** (the best validation epoch of each trial), "
            f"{ctx.budget} epochs per trial" + (f"; {settings}" if settings else "") + "."]
    out += ["", f"Fidelity: trials run {fidelity_text(ctx.definition)}."]
    check = ctx.out_dir / f"{FIDELITY_CHECK}.json"
    if check.is_file():
        final = json.loads(check.read_text(encoding="utf-8"))["agreement"].get("final")
        rho = f": Spearman {final['spearman']:.2f} between trial and full fidelity" if final else ""
        out += ["", f"Fidelity check{rho} ([fidelity_check.md](fidelity_check.md))."]
    out += time_limit_lines(study, ctx.max_train_seconds, best)
    out += [f"\nNote: {note}" for note in ctx.notes]
    out += [
        "", "## Summary", "",
        *table(["trials", "complete", "pruned", "failed", "running"],
               [[str(len(study.get_trials(deepcopy=False))), str(summary.complete),
                 str(summary.pruned), str(summary.failed), str(summary.running)]]),
        "",
        f"- Wall time: {summary.wall_time_s / 60:.1f} min (first trial start to last trial end); "
        f"time in trials: {summary.trial_time_s / 60:.1f} min.",
        f"- Epochs: {summary.epochs_run} run of {summary.epochs_unpruned} without pruning; "
        f"pruning saved {summary.epochs_saved} epochs ({100 * summary.saved_fraction:.0f}%).",
        "- " + " ".join(_baseline_lines(baseline, best, ctx.metric,
                                        study.user_attrs.get("baseline_note", ""))),
    ]
    out += warm_start_section(study, ctx.metric)
    space = describe(ctx.definition.space)
    if space:
        out += ["", "Search space:", "", *(f"- `{line}`" for line in space)]
    out += ["", "## Best trial", ""]
    if best is None:
        out.append("No trial has completed yet.")
    else:
        seconds = best.duration.total_seconds() if best.duration else 0.0
        record = best_record or {}
        checkpoint = (f"`{record['checkpoint']}`" if record.get("checkpoint")
                      else f"none on this machine ({record.get('checkpoint_note', '')})")
        out += [
            f"Trial **{best.number}**: {ctx.metric} = **{best.value:.4f}** at epoch "
            f"{best.user_attrs.get('best_epoch', '?')} ({seconds:.0f} s).", "",
            *table(["parameter", "value"], [[k, fmt(v)] for k, v in best.params.items()]), "",
            "Validation metrics at its best epoch (recalls in %):", "",
            *metrics_table({"val": {k[4:]: v for k, v in best.user_attrs.get("metrics", {}).items()}}),
            "",
            f"Checkpoint (trial fidelity, weights only): {checkpoint}; TensorBoard run: "
            f"`{best.user_attrs.get('run_dir', '')}`; the target with these parameters at full "
            "fidelity: [best_config.yaml](best_config.yaml).",
        ]
    if retrain is not None and "configs" in retrain:
        out += retrain_section(retrain)
    out += ["", "## Top 10 trials", ""]
    complete = ranked(study)[:10]
    names = sorted({name for t in complete for name in t.params})
    out += [("Best first (feasible trials before those over the time limit). " if
             ctx.max_train_seconds is not None else "") +
            "run s: the trial's training and validation; target train s: the target's "
            "training time with its parameters, projected from its first epoch.", ""]
    out += table(
        ["trial", ctx.metric, "best epoch", "run s", "s / epoch", "target train s",
         *names],
        [[f"{t.number}" + (" (baseline)" if baseline and t.number == baseline.number else "")
          + ("" if is_feasible(t) else " (over the limit)"),
          f"{t.value:.4f}", str(t.user_attrs.get("best_epoch", "")),
          _seconds(t, "run_seconds"), f"{t.user_attrs['epoch_seconds']:.1f}"
          if "epoch_seconds" in t.user_attrs else "", _seconds(t, "projected_train_seconds"),
          *(fmt(t.params.get(n, "")) for n in names)] for t in complete],
    ) if complete else ["No complete trials yet."]
    out += importance_section(importances)
    out += ["", "## Plots", "", *_plot_lines(study, plots)]
    seeds_cmd = f"python src/optimize.py --study-name {ctx.study_name} --trials 0 --retrain-best"
    out += [
        "", "## Next steps", "", "```",
        "# train the target with the best parameters (full fidelity), then evaluate on test:",
        f"python src/main.py --config {ctx.out_dir / 'best_config.yaml'}",
        "# best and base config, 3 seeds each, at full fidelity (mean ± std on test):",
        f"{seeds_cmd} --seeds 3",
        "# continue the study with more trials:",
        f"python src/optimize.py --study-name {ctx.study_name} --trials 20",
        "# every trial's curves and hparams (HParams tab):",
        f"tensorboard --logdir {Path(ctx.runs_dir) / ctx.study_name}",
        "# browse the study (optuna-dashboard):",
        f"optuna-dashboard {ctx.storage_label}"
        + (f" --artifact-dir {ctx.artifact_dir}" if ctx.artifact_dir else ""),
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
            self._plots = write_plots(study, ctx.out_dir / PLOTS_DIR, importance_evaluator(),
                                      ctx.metric)
            self._last_plot = time.monotonic()
        frame = trials_frame(study)
        with atomic_path(ctx.out_dir / "trials.csv") as tmp:
            frame.to_csv(tmp, index=False)
        best = best_trial(study)
        record = None
        if best is not None:
            checkpoint, note = local_best_checkpoint(
                best, study_checkpoint_dir(ctx.checkpoints_dir, ctx.study_name),
                ctx.artifact_store)
            record = best_results(study, best, ctx, checkpoint, note)
            write_atomic(ctx.out_dir / "best_params.json",
                              json.dumps(best.params, indent=2) + "\n")
            write_atomic(ctx.out_dir / "best_hyperparameters.txt",
                              best_hyperparameters_text(best, ctx))
            write_atomic(ctx.out_dir / "best_results.json",
                              json.dumps(record, indent=2) + "\n")
            write_atomic(ctx.out_dir / "best_config.yaml", best_config_yaml(best, ctx))
        summary = summarize(study, ctx.budget)
        write_atomic(
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
