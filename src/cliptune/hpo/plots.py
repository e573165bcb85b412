"""Study plots: interactive HTML (plotly.js embedded, works offline) and static PNGs.

PNGs come from `optuna.visualization.matplotlib` (plotly's own image export needs
kaleido and a Chrome binary, which an offline machine cannot fetch).
"""

from __future__ import annotations

import os
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


@dataclass(frozen=True)
class Plot:
    """One plot of the report."""

    name: str  # file stem
    title: str
    html: Callable  # (study, evaluator) -> plotly figure
    png: Callable | None = None  # (study, evaluator) -> matplotlib Axes
    needs_complete: int = 1  # complete trials needed before it means anything
    needs_params: int = 1  # distinct parameters needed


PLOTS = (
    Plot("optimization_history", "Optimization history",
         lambda s, e: vis.plot_optimization_history(s),
         lambda s, e: vis_mpl.plot_optimization_history(s)),
    Plot("param_importances", "Parameter importances",
         lambda s, e: vis.plot_param_importances(s, evaluator=e),
         lambda s, e: vis_mpl.plot_param_importances(s, evaluator=e), needs_complete=2),
    Plot("intermediate_values", "Intermediate values (pruning curves)",
         lambda s, e: vis.plot_intermediate_values(s),
         lambda s, e: vis_mpl.plot_intermediate_values(s), needs_complete=0),
    Plot("parallel_coordinate", "Parallel coordinate",
         lambda s, e: vis.plot_parallel_coordinate(s)),
    Plot("contour", "Contour", lambda s, e: vis.plot_contour(s), needs_params=2),
    Plot("slice", "Slice", lambda s, e: vis.plot_slice(s)),
    Plot("timeline", "Timeline", lambda s, e: vis.plot_timeline(s), needs_complete=0),
)


def _replace_atomically(write: Callable[[str], None], path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(str(tmp))
    os.replace(tmp, path)


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


def write_plots(
    study: optuna.Study, folder: Path, evaluator: optuna.importance.BaseImportanceEvaluator
) -> dict[str, list[str] | str]:
    """Write every plot that the study's trials allow into `folder`.

    Returns, per plot name, the file names written, or a note saying why it was skipped.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str] | str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-API and too-few-trials notices
        for plot in PLOTS:
            reason = _skip_reason(plot, study)
            if reason is not None:
                written[plot.name] = reason
                continue
            files = [f"{plot.name}.html"]
            figure = plot.html(study, evaluator)
            figure.update_layout(title=plot.title)
            _replace_atomically(
                lambda p, f=figure: f.write_html(p, include_plotlyjs=True), folder / files[0]
            )
            if plot.png is not None:
                axes = plot.png(study, evaluator)
                figure_png = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                files.append(f"{plot.name}.png")
                _replace_atomically(
                    lambda p, f=figure_png: f.savefig(p, dpi=100, bbox_inches="tight"),
                    folder / files[1],
                )
                plt.close(figure_png)
            written[plot.name] = files
    return written
