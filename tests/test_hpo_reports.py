"""Reports from a study with a synthetic objective (no training): files, contents, notes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
from hpo_tiny import synthetic_definition
from optuna.trial import TrialState
from PIL import Image

from cliptune.config import RunConfig, config_to_dict, load_config
from cliptune.hpo.report.files import ReportContext, StudyReporter, summarize
from cliptune.hpo.report.progress import trial_line
from cliptune.hpo.results import settle_trial_checkpoint
from cliptune.hpo.study import TrialFailed

BUDGET = 4


def synthetic_objective(trial: optuna.Trial) -> float:
    """Loss curves that depend on lr; trial 2 fails like a diverged run."""
    lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    depth = trial.suggest_int("depth", 1, 3)
    config = RunConfig(name=f"s/trial_{trial.number:04d}")
    config.train.lr, config.train.epochs = lr, BUDGET
    trial.set_user_attr("config", config_to_dict(config))
    if trial.number == 2:
        trial.set_user_attr("fail_reason", "diverged: loss became nan")
        raise TrialFailed("diverged")
    value = math.inf
    for epoch in range(1, BUDGET + 1):
        value = abs(math.log10(lr) + 2.5) + depth / 10 + 1 / epoch
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    trial.set_user_attr("best_epoch", BUDGET)
    trial.set_user_attr("metrics", {"val_loss": value, "val_rsum": 100 / value})
    return value


def make_study(tmp_path: Path, n_trials: int) -> optuna.Study:
    study = optuna.create_study(
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal"))),
        study_name="s",
        sampler=optuna.samplers.RandomSampler(seed=1),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    )
    study.optimize(synthetic_objective, n_trials=n_trials, catch=(TrialFailed,))
    return study


def context(tmp_path: Path) -> ReportContext:
    return ReportContext(synthetic_definition(tmp_path, BUDGET), "s", tmp_path / "results" / "s",
                         storage_label="s.journal")


def test_full_report_from_a_study(tmp_path):
    study = make_study(tmp_path, 12)
    states = [t.state for t in study.trials]
    assert TrialState.PRUNED in states and states[2] == TrialState.FAIL
    ctx = context(tmp_path)
    StudyReporter(ctx).write(study, plots=True)
    out = ctx.out_dir

    frame = pd.read_csv(out / "trials.csv")
    assert len(frame) == 12
    assert {"number", "value", "state", "params_lr", "epochs", "fail_reason",
            "last_value", "duration_s"} <= set(frame.columns)
    assert frame.loc[2, "fail_reason"].startswith("diverged")
    pruned = frame[frame.state == "PRUNED"]
    assert (pruned.epochs < BUDGET).all() and pruned.last_value.notna().all()

    best = study.best_trial
    assert json.loads((out / "best_params.json").read_text()) == best.params
    results = json.loads((out / "best_results.json").read_text())
    assert results["trial"] == best.number and results["value"] == pytest.approx(best.value)
    assert results["metrics"]["val_loss"] == pytest.approx(best.value)
    assert results["direction"] == "minimize" and results["duration_s"] >= 0
    text = (out / "best_hyperparameters.txt").read_text()
    assert re.search(rf"^lr\s+= {re.escape(repr(best.params['lr']))}$", text, re.M)

    config = load_config(out / "best_config.yaml")
    assert config.train.lr == pytest.approx(best.params["lr"])
    assert config.name == "s-best" and config.checkpoints_dir == str(tmp_path / "ckpt")

    traces = {"optimization_history": "scatter", "param_importances": "bar",
              "intermediate_values": "scatter", "parallel_coordinate": "parcoords",
              "contour": "contour", "slice": "scatter", "timeline": "bar"}
    for name, trace in traces.items():
        html = (out / "plots" / f"{name}.html").read_text()
        assert len(html) < 500_000  # plotly.js is not embedded in every page ...
        assert 'src="plotly.min.js"' in html  # ... but read from the folder: offline
        assert "Plotly.newPlot" in html and f'"type":"{trace}"' in html
    assert (out / "plots" / "plotly.min.js").stat().st_size > 1_000_000
    assert "val_loss" in (out / "plots" / "optimization_history.html").read_text()
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        with Image.open(out / "plots" / f"{name}.png") as image:
            assert image.size[0] > 100 and image.size[1] > 100

    report = (out / "report.md").read_text()
    summary = summarize(study, BUDGET)
    assert f"| 12 | {summary.complete} | {summary.pruned} | 1 | 0 |" in report
    assert f"pruning saved {summary.epochs_saved} epochs" in report
    assert f"Trial **{best.number}**" in report
    assert "## Parameter importances (PED-ANOVA)" in report and "| lr |" in report
    n_complete, n_reported = summary.complete, summary.complete + summary.pruned
    assert f"complete trials, final value ({n_complete} trials)" in report
    assert f"complete and pruned trials, value at epoch 1 ({n_reported} trials)" in report
    assert "treat these as a rough hint" in report  # fewer than 20 trials
    assert "plots/optimization_history.html" in report
    assert "python src/main.py --config" in report and "tensorboard --logdir" in report
    assert "optuna-dashboard s.journal" in report
    assert not list(out.glob(".*tmp*")) and not list((out / "plots").glob(".*tmp*"))


def test_epochs_saved_counts_what_pruned_trials_did_not_run(tmp_path):
    study = make_study(tmp_path, 8)
    summary = summarize(study, BUDGET)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    run = sum(len(t.intermediate_values) for t in finished)
    assert summary.epochs_run == run and summary.epochs_unpruned == BUDGET * len(finished)
    assert summary.saved_fraction == pytest.approx(1 - run / (BUDGET * len(finished)))
    assert summary.failed == 1


def test_too_few_trials_give_notes_not_errors(tmp_path):
    study = make_study(tmp_path, 1)
    ctx = context(tmp_path)
    StudyReporter(ctx).write(study, plots=True)
    report = (ctx.out_dir / "report.md").read_text()
    assert "needs at least 2 trials (has 1)" in report
    assert ("Parameter importances: not drawn (needs at least 2 trials that reported a value)"
            in report)
    assert not (ctx.out_dir / "plots" / "param_importances.html").exists()
    assert (ctx.out_dir / "plots" / "optimization_history.html").is_file()


def test_plots_are_throttled_between_trials(tmp_path):
    study = make_study(tmp_path, 3)
    ctx = context(tmp_path)
    reporter = StudyReporter(ctx, plot_interval_s=3600)
    reporter.write(study)  # within the interval: cheap files only
    history = ctx.out_dir / "plots" / "optimization_history.html"
    assert (ctx.out_dir / "trials.csv").is_file() and not history.exists()
    assert "Optimization history (best so far): drawn at the next plot refresh" in (
        ctx.out_dir / "report.md").read_text()
    reporter.write(study, plots=True)  # the end of a study draws everything
    first = history.stat().st_mtime_ns
    study.optimize(synthetic_objective, n_trials=1, catch=(TrialFailed,))
    reporter.write(study)
    assert history.stat().st_mtime_ns == first
    assert len(pd.read_csv(ctx.out_dir / "trials.csv")) == 4
    fast = StudyReporter(ctx, plot_interval_s=0)
    fast.write(study)  # interval elapsed: plots redrawn with the new trial
    assert history.stat().st_mtime_ns > first


def test_best_checkpoint_is_promoted_only_for_the_study_best(tmp_path):
    study = make_study(tmp_path, 0)
    folder = tmp_path / "ckpt" / "s"

    def finished(value: float, number_tag: str):
        scratch = tmp_path / "scratch" / number_tag
        scratch.mkdir(parents=True)
        (scratch / "best.pt").write_text(number_tag)
        trial = study.ask()
        study.tell(trial, value)
        return study.trials[trial.number], scratch

    trial, scratch = finished(2.0, "a")
    assert settle_trial_checkpoint(study, trial, folder, scratch / "best.pt")
    assert (folder / "best.pt").read_text() == "a" and not scratch.exists()
    trial, scratch = finished(3.0, "b")
    assert not settle_trial_checkpoint(study, trial, folder, scratch / "best.pt")
    assert (folder / "best.pt").read_text() == "a" and not scratch.exists()
    trial, scratch = finished(1.0, "c")
    assert settle_trial_checkpoint(study, trial, folder, scratch / "best.pt")
    assert json.loads((folder / "best.json").read_text()) == {"trial": 2, "value": 1.0}


def test_trial_line_shows_state_value_epochs_and_reason(tmp_path):
    study = make_study(tmp_path, 4)
    failed = trial_line(study.trials[2], "val_loss", BUDGET)
    assert "fail" in failed and "diverged" in failed
    complete = next(t for t in study.trials if t.state == TrialState.COMPLETE)
    line = trial_line(complete, "val_loss", BUDGET)
    assert f"val_loss {complete.value:.4f}" in line and f"{BUDGET}/{BUDGET} epochs" in line


def test_learning_curves_name_the_metric_and_tell_states_apart(tmp_path):
    from cliptune.hpo.report.plots import learning_curves_html

    study = make_study(tmp_path, 12)
    figure = learning_curves_html(study, None, "val_loss")
    assert figure.layout.xaxis.title.text == "epoch"
    assert figure.layout.yaxis.title.text == "validation val_loss"
    legend = [trace.name for trace in figure.data if trace.showlegend]
    assert sorted(legend) == ["complete", "pruned"]  # one entry per state, not per trial
    colours = {trace.name: trace.line.color for trace in figure.data}
    assert colours["complete"] != colours["pruned"]
    assert len(figure.data) == sum(1 for t in study.trials if t.intermediate_values)


def test_a_failing_plot_is_logged_and_the_rest_is_written(tmp_path, monkeypatch, capsys):
    from cliptune.hpo.report import plots

    def broken(study, evaluator, metric):
        raise ValueError("no contour today")

    monkeypatch.setattr(plots, "PLOTS", tuple(
        plots.Plot(p.name, p.title, broken, p.png, p.needs_complete, p.needs_params)
        if p.name == "contour" else p for p in plots.PLOTS))
    study = make_study(tmp_path, 6)
    ctx = context(tmp_path)
    StudyReporter(ctx).write(study, plots=True)
    assert "plot contour not drawn: ValueError: no contour today" in capsys.readouterr().err
    report = (ctx.out_dir / "report.md").read_text()
    assert "Contour: not drawn (failed: ValueError: no contour today)" in report
    assert (ctx.out_dir / "plots" / "slice.html").is_file()


def test_rung_importances_use_pruned_trials_at_their_common_epoch(tmp_path):
    from cliptune.hpo.report.importances import deepest_common_epoch, rung_importances

    study = make_study(tmp_path, 12)
    reported = [t for t in study.trials if t.intermediate_values]
    assert deepest_common_epoch(reported) == 1
    result = rung_importances(study)
    assert result.trials == len(reported) > summarize(study, BUDGET).complete
    assert set(result.values) == {"lr", "depth"}
    assert result.values["lr"] > result.values["depth"]  # the synthetic loss is mostly lr


@pytest.mark.parametrize("complete", [0, 1])
def test_importance_plot_with_fewer_than_2_complete_trials_uses_the_common_rung(
        tmp_path, complete):
    study = make_study(tmp_path, 0)
    distributions = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                     "depth": optuna.distributions.IntDistribution(1, 3)}
    for k in range(6):  # pruned after 2 epochs; the loss at epoch 2 is mostly lr
        lr, depth = 10 ** (-4 + 0.4 * k), 1 + k % 3
        values = {e: abs(math.log10(lr) + 2.5) + depth / 100 + 1 / e for e in (1, 2)}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.PRUNED, params={"lr": lr, "depth": depth},
            distributions=distributions, intermediate_values=values))
    for _ in range(complete):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 3e-3, "depth": 2}, distributions=distributions,
            intermediate_values={e: 1.0 / e for e in range(1, 5)}, value=0.25,
            user_attrs={"config": config_to_dict(RunConfig(name="s/trial_0006"))}))
    ctx = context(tmp_path)
    StudyReporter(ctx).write(study, plots=True)
    plots = ctx.out_dir / "plots"
    html = (plots / "param_importances.html").read_text()
    assert '"type":"bar"' in html and "value at epoch 2" in html
    with Image.open(plots / "param_importances.png") as image:
        assert image.size[0] > 100
    report = (ctx.out_dir / "report.md").read_text()
    assert (f"Parameter importances (from {6 + complete} complete and pruned trials, value at "
            "epoch 2 (the deepest epoch all reached") in report
