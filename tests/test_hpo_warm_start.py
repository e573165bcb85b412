"""Warm starts: the best trials of earlier studies enqueued into a study, fitted to its
space, with their provenance, once; unknown sources refused before anything is written."""

from __future__ import annotations

import optuna
import pytest
from hpo_tiny import SPACE, load, tiny_plan, write_study_files
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from cliptune.cli import optimize
from cliptune.errors import ConfigError
from cliptune.hpo.definition import SPACE_ATTR, StudySettings
from cliptune.hpo.driver import open_for_trials
from cliptune.hpo.search_space import search_space_from_dict
from cliptune.hpo.study import make_storage
from cliptune.hpo.warm_start import WARM_ATTR, WARM_NOTES_ATTR, fit_to_space

# The source study's space differs from SPACE (lr [1e-4, 1e-2] log, depth 1..2, head_dim
# {8, 16}): a wider lr and depth, and a dropout the new space lacks.
SOURCE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "depth": IntDistribution(1, 4),
    "head_dim": CategoricalDistribution([8, 16]),
    "dropout": FloatDistribution(0.0, 0.3),
}
TRIALS = [  # (params, val_loss): best first once ranked
    ({"lr": 2e-3, "depth": 3, "head_dim": 8, "dropout": 0.1}, 1.0),
    ({"lr": 5e-2, "depth": 2, "head_dim": 16, "dropout": 0.0}, 2.0),
    ({"lr": 5e-4, "depth": 1, "head_dim": 16}, 3.0),  # the tiny target's own values
]


def make_source(results, name="src") -> str:
    """A finished study `name` under `results` (journal), built without training."""
    storage = make_storage(None, results, name)
    study = optuna.create_study(study_name=name, storage=storage)
    study.set_user_attr(SPACE_ATTR, {"parameters": {
        "lr": {"target": ["train.lr"]}, "depth": {"target": ["model.vision_layers",
                                                             "model.text_layers"]}}})
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 1e-3},
                                 distributions={"lr": SOURCE["lr"]}, intermediate_values={1: 0.1}))
    for params, value in reversed(TRIALS):  # trial numbers 1..3, the best last
        study.add_trial(create_trial(params=params, value=value,
                                     distributions={k: SOURCE[k] for k in params}))
    return str(results / name / "study.journal")


def test_only_what_fits_the_space_is_kept_with_a_note_per_dropped_parameter():
    space = search_space_from_dict(SPACE)
    kept, notes = fit_to_space({"lr": 2e-3, "depth": 3, "head_dim": 8, "dropout": 0.1}, space)
    assert kept == {"lr": 2e-3, "head_dim": 8}
    assert notes == ["depth = 3: outside this study's space (depth: int [1, 2] -> "
                     "model.vision_layers, model.text_layers)",
                     "dropout = 0.1: not in this study's search space"]
    # the same name setting other config keys there than here is dropped too
    kept, notes = fit_to_space({"depth": 2, "head_dim": 24.0}, space,
                               {"parameters": {"depth": {"target": ["model.vision_layers"]}}})
    assert kept == {} and notes[0] == ("depth: sets model.vision_layers there, "
                                       "model.vision_layers, model.text_layers here")
    assert notes[1].startswith("head_dim = 24.0: outside")


def settings(tmp_path, **kwargs) -> StudySettings:
    return StudySettings(study_name="dst", trials=0, results_dir=str(tmp_path / "results"),
                         show_progress=False, **kwargs)


def test_warm_starts_follow_the_baseline_with_provenance_once(tmp_path, cache_dir):
    journal = make_source(tmp_path / "results")
    plan = tiny_plan(tmp_path, cache_dir)
    opened = open_for_trials(settings(tmp_path, warm_start=("src",), warm_start_top=3), plan)
    trials = opened.study.trials
    assert [t.state for t in trials] == [TrialState.WAITING] * 3
    assert trials[0].user_attrs == {"baseline": True}
    first, second = trials[1], trials[2]
    assert first.system_attrs["fixed_params"] == {"lr": 2e-3, "head_dim": 8}
    assert first.user_attrs[WARM_ATTR] == f"src#3 ({journal})"
    assert first.user_attrs[WARM_NOTES_ATTR] == [
        "depth = 3: outside this study's space (depth: int [1, 2] -> model.vision_layers, "
        "model.text_layers)", "dropout = 0.1: not in this study's search space"]
    assert second.system_attrs["fixed_params"] == {"depth": 2, "head_dim": 16}
    assert second.user_attrs[WARM_ATTR] == f"src#2 ({journal})"
    notes = "\n".join(opened.notes)
    assert f"warm start src#3 ({journal}): enqueued as trial 1" in notes
    assert f"warm start src#3 ({journal}): dropped dropout = 0.1" in notes
    # src#1 holds the target's own values: the baseline already runs them
    assert (f"warm start src#1 ({journal}): the study already has a trial with these "
            "parameters; not enqueued") in notes
    assert "pruner auto: Hyperband, first rung at epoch 1: no fidelity check" in notes

    again = open_for_trials(settings(tmp_path, warm_start=("src",), warm_start_top=3), plan)
    assert len(again.study.trials) == 3  # continued with the same --warm-start: nothing new
    assert f"warm start src#3 ({journal}): already trial 1 of this study" in again.notes


def test_unknown_sources_are_refused_before_anything_is_written(tmp_path, cache_dir):
    journal = make_source(tmp_path / "results")
    plan = tiny_plan(tmp_path, cache_dir)
    for spec, message in [
        ("nope", "--warm-start nope: no study journal at .*nope/study.journal"),
        (f"other@{journal}", "--warm-start other@.*holds no study 'other' .*it holds: src"),
        (f"src@{tmp_path / 'missing.journal'}", "no study journal at .*missing.journal"),
        ("dst", "that is this study itself"),
    ]:
        with pytest.raises(ConfigError, match=message):
            open_for_trials(settings(tmp_path, warm_start=("src", spec)), plan)
    assert not (tmp_path / "results" / "dst").exists()
    assert not (tmp_path / "missing.journal").exists()
    with pytest.raises(ConfigError, match="--warm-start ','"):
        optimize.build_settings(optimize.parse_args(["--warm-start", ","]))


def test_cli_runs_the_warm_start_second_and_reports_it(tmp_path, cache_dir, capsys):
    flags = write_study_files(tmp_path, cache_dir, trial_epochs=1, max_samples=16)
    flags.remove("--quiet")  # the notes are printed
    journal = make_source(tmp_path / "results")
    assert optimize.run(flags + ["--study-name", "dst", "--trials", "2", "--pruner", "none",
                                 "--warm-start", f"src@{journal}"]) == 0
    study = load(tmp_path, "dst")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    warm = study.trials[1]
    assert warm.params["lr"] == pytest.approx(2e-3) and warm.params["head_dim"] == 8
    assert warm.params["depth"] in (1, 2)  # left open by the source: drawn by the sampler
    out = capsys.readouterr().out
    assert "note: warm start src#3" in out and "dropped depth = 3" in out
    assert "verdict: " in out
    report = (tmp_path / "results" / "dst" / "report.md").read_text()
    assert report.split("\n")[2].startswith("**Verdict:** ")
    assert "## Warm starts" in report
    assert (f"| 1 | src#3 ({journal}) | complete | {warm.value:.4f} | depth = 3: outside "
            in report)
