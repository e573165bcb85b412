"""The text of `report.md`: what a person reads first about a study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cliptune.hpo.importances import Importances
from cliptune.hpo.plots import PLOTS
from cliptune.hpo.study import METRICS
from cliptune.hpo.time_limit import feasibility_counts, is_feasible, ranked

if TYPE_CHECKING:
    from cliptune.hpo.reports import ReportContext, StudySummary

PLOTS_DIR = "plots"
RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


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
    keys = (*RECALLS, "rsum", "loss")
    return table(["split", *keys], [[split] + [_cell(m, k) for k in keys]
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
    settings = ", ".join(f"{k} {v}" for k, v in ctx.settings.items())
    out += [f"Objective: **{direction} {ctx.metric}** (the best validation epoch of each trial), "
            f"{ctx.budget} epochs per trial" + (f"; {settings}" if settings else "") + "."]
    if ctx.fidelity:
        out += ["", f"Fidelity: trials run {ctx.fidelity}."]
    check = ctx.out_dir / "fidelity_check.json"
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
    if ctx.search_space:
        out += ["", "Search space:", "", *(f"- `{line}`" for line in ctx.search_space)]
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
        f"optuna-dashboard {ctx.storage_label}",
        "```", "",
    ]
    return "\n".join(out)
