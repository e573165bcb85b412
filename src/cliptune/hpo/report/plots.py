"""Study plots: interactive HTML (plotly.js once per folder, works offline) and static PNGs.

PNGs come from `optuna.visualization.matplotlib` (plotly's own image export needs
kaleido and a Chrome binary, which an offline machine cannot fetch).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import optuna.visualization as vis  # noqa: E402
import optuna.visualization.matplotlib as vis_mpl  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from cliptune.files import atomic_path  # noqa: E402
from cliptune.hpo.report.importances import plot_source  # noqa: E402

STATE_STYLE = {  # (colour, legend label) of the curves of each trial state
    TrialState.COMPLETE: ("#1f77b4", "complete"),
    TrialState.PRUNED: ("#b0b0b0", "pruned"),
    TrialState.FAIL: ("#d62728", "failed"),
    TrialState.RUNNING: ("#2ca02c", "running"),
}


@dataclass(frozen=True)
class Plot:
    """One plot of the report."""

    name: str  # file stem
    title: str
    html: Callable  # (study, evaluator, metric) -> plotly figure
    png: Callable | None = None  # (study, evaluator, metric) -> matplotlib Figure or Axes
    needs_complete: int = 1  # complete trials needed before it means anything
    needs_params: int = 1  # distinct parameters needed
    # study -> (the study to draw, what it is in words) or None (nothing to draw yet)
    source: Callable | None = None


def _curves(study: optuna.Study):
    """(trial, epochs, values, colour, label) per trial that reported values."""
    for trial in study.get_trials(deepcopy=False):
        if trial.intermediate_values and trial.state in STATE_STYLE:
            epochs = sorted(trial.intermediate_values)
            yield (trial, epochs, [trial.intermediate_values[e] for e in epochs],
                   *STATE_STYLE[trial.state])


def learning_curves_html(study: optuna.Study, evaluator, metric: str):
    """Every trial's metric per epoch, coloured by how it ended (one legend entry per state)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    shown: set[str] = set()
    for trial, epochs, values, colour, label in _curves(study):
        figure.add_trace(go.Scatter(
            x=epochs, y=values, mode="lines+markers", name=label, legendgroup=label,
            showlegend=label not in shown, line={"color": colour, "width": 1},
            marker={"size": 4}, hovertemplate=f"trial {trial.number}<br>epoch %{{x}}<br>"
                                              f"{metric} %{{y:.4f}}<extra>{label}</extra>"))
        shown.add(label)
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(title_text=f"validation {metric}")
    return figure


def learning_curves_png(study: optuna.Study, evaluator, metric: str):
    """Matplotlib twin of `learning_curves_html`."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    shown: set[str] = set()
    for _, epochs, values, colour, label in _curves(study):
        axes.plot(epochs, values, color=colour, marker=".", linewidth=1,
                  label=None if label in shown else label, alpha=0.8)
        shown.add(label)
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"validation {metric}")
    axes.set_title(f"Learning curves of all trials ({metric} per epoch)")
    axes.legend()
    return figure


def _history_png(study: optuna.Study, evaluator, metric: str):
    axes = vis_mpl.plot_optimization_history(study, target_name=metric)
    axes.set_xlabel("trial")
    return axes


PLOTS = (
    Plot("optimization_history", "Optimization history (best so far)",
         lambda s, e, m: vis.plot_optimization_history(s, target_name=m).update_xaxes(
             title_text="trial"),
         _history_png),
    Plot("param_importances", "Parameter importances",
         lambda s, e, m: vis.plot_param_importances(s, evaluator=e, target_name=m),
         lambda s, e, m: vis_mpl.plot_param_importances(s, evaluator=e, target_name=m),
         needs_complete=0, source=plot_source),
    Plot("intermediate_values", "Learning curves (pruned trials stop early)",
         learning_curves_html, learning_curves_png, needs_complete=0),
    Plot("parallel_coordinate", "Parallel coordinate",
         lambda s, e, m: vis.plot_parallel_coordinate(s, target_name=m)),
    Plot("contour", "Contour", lambda s, e, m: vis.plot_contour(s, target_name=m),
         needs_params=2),
    Plot("slice", "Slice", lambda s, e, m: vis.plot_slice(s, target_name=m)),
    Plot("timeline", "Timeline", lambda s, e, m: vis.plot_timeline(s), needs_complete=0),
)


def _skip_reason(plot: Plot, study: optuna.Study) -> str | None:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < plot.needs_complete:
        return f"needs at least {plot.needs_complete} complete trial(s), has {len(complete)}"
    if not trials or (plot.name == "intermediate_values"
                      and not any(t.intermediate_values for t in trials)):
        return "no trial has reported a value yet"
    n_params = len({name for t in complete for name in t.params})
    if n_params < plot.needs_params:
        return f"needs at least {plot.needs_params} searched parameters"
    return None


def _draw(plot: Plot, study: optuna.Study, folder: Path, evaluator, metric: str,
          title: str) -> list[str]:
    files = [f"{plot.name}.html"]
    figure = plot.html(study, evaluator, metric)
    figure.update_layout(title=f"{title}: {metric}")
    # plotly.js goes once into the folder (plotly.min.js), not into every page
    with atomic_path(folder / files[0]) as tmp:
        figure.write_html(str(tmp), include_plotlyjs="directory")
    if plot.png is not None:
        drawn = plot.png(study, evaluator, metric)
        figure_png = drawn.flat[0].figure if hasattr(drawn, "flat") else drawn.figure
        files.append(f"{plot.name}.png")
        try:
            with atomic_path(folder / files[1]) as tmp:
                figure_png.savefig(str(tmp), dpi=100, bbox_inches="tight")
        finally:
            plt.close(figure_png)
    return files


def write_plots(
    study: optuna.Study, folder: Path, evaluator: optuna.importance.BaseImportanceEvaluator,
    metric: str = "value",
) -> dict[str, list[str] | str]:
    """Write every plot that the study's trials allow into `folder`.

    Returns, per plot name, the file names written, or a note saying why it was
    skipped. A plot that fails is logged and skipped; the others are still written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str] | str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and too-few-trials notices
        for plot in PLOTS:
            drawn, title, reason = study, plot.title, None
            if plot.source is not None:
                found = plot.source(study)
                if found is None:
                    reason = "needs at least 2 trials that reported a value"
                else:
                    drawn, what = found
                    title = f"{plot.title} ({what})"
            reason = reason or _skip_reason(plot, drawn)
            if reason is not None:
                written[plot.name] = reason
                continue
            try:
                written[plot.name] = _draw(plot, drawn, folder, evaluator, metric, title)
            except Exception as err:  # noqa: BLE001 - a plot must never stop a study
                print(f"warning: plot {plot.name} not drawn: {type(err).__name__}: {err}",
                      file=sys.stderr, flush=True)
                written[plot.name] = f"failed: {type(err).__name__}: {err}"
    return written
