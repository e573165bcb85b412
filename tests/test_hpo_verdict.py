"""The report's verdict: did a trial beat the target's own settings (built studies, no
training)."""

from __future__ import annotations

import optuna
from hpo_tiny import synthetic_definition
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from cliptune.config import RunConfig, config_to_dict
from cliptune.hpo.report.files import ReportContext, StudyReporter
from cliptune.hpo.verdict import verdict

DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1e-2, log=True), "depth": IntDistribution(1, 4),
                 "width": CategoricalDistribution([32, 64, 96])}
CONFIG = config_to_dict(RunConfig())  # what the report's best_config.yaml is built from


def study_of(rows, direction="minimize", baseline=True) -> optuna.Study:
    """A study of complete trials `rows` = [(params, value)]; the first is the baseline."""
    study = optuna.create_study(direction=direction, study_name="v")
    for i, (params, value) in enumerate(rows):
        attrs = {"config": CONFIG} | ({"baseline": True} if baseline and i == 0 else {})
        study.add_trial(create_trial(params=params, distributions=DISTRIBUTIONS, value=value,
                                     user_attrs=attrs))
    return study


def test_a_trial_that_beats_the_baseline_is_named_with_its_margin():
    study = study_of([({"lr": 1e-3, "depth": 2, "width": 64}, 2.5),
                      ({"lr": 3e-3, "depth": 3, "width": 64}, 2.3),
                      ({"lr": 1e-4, "depth": 1, "width": 32}, 2.9)])
    sentence = verdict(study, "val_loss", "v")
    assert sentence == (
        "Trial 1 is better than the target's own settings by 0.2 val_loss at trial fidelity "
        "(2.3000 against 2.5000, trial 0); `python src/optimize.py --study-name v --trials 0 "
        "--retrain-best --seeds 3` decides whether it holds at full fidelity.")
    maximized = study_of([({"lr": 1e-3, "depth": 2, "width": 64}, 200.0),
                          ({"lr": 3e-3, "depth": 3, "width": 64}, 212.5)], "maximize")
    assert verdict(maximized, "rsum", "v").startswith(
        "Trial 1 is better than the target's own settings by 12.5 rsum")


def test_no_winner_names_the_parameters_pressed_against_an_edge():
    # the best three sit at lr's upper edge and width's lower one; depth is mid-range
    study = study_of([({"lr": 9e-3, "depth": 2, "width": 32}, 2.0),
                      ({"lr": 8e-3, "depth": 3, "width": 32}, 2.1),
                      ({"lr": 1e-4, "depth": 2, "width": 96}, 2.2),
                      ({"lr": 1e-3, "depth": 1, "width": 64}, 2.4),
                      ({"lr": 2e-3, "depth": 4, "width": 64}, 2.6)])
    sentence = verdict(study, "val_loss", "v")
    assert sentence.startswith("No trial beat the target's own settings (trial 0, the "
                               "baseline) — widen the space: lr beyond its upper edge (0.01); "
                               "width beyond its lower edge (32).")
    assert "depth" not in sentence and "Only" not in sentence
    # nothing at an edge: the levers are missing
    middle = study_of([({"lr": 1e-3, "depth": 2, "width": 64}, 2.0),
                       ({"lr": 2e-3, "depth": 3, "width": 64}, 2.1)])
    sentence = verdict(middle, "val_loss", "v")
    assert "— widen the space with other levers: no parameter's best values sit at an edge" \
        in sentence and "Only 2 trial(s) completed" in sentence


def test_without_a_baseline_the_verdict_says_it_cannot_tell():
    study = study_of([({"lr": 1e-3, "depth": 2, "width": 64}, 2.0)], baseline=False)
    study.set_user_attr("baseline_note", "no baseline trial: its lr = 0.05 is outside the space")
    assert verdict(study, "val_loss", "v").startswith(
        "There is no baseline trial (its lr = 0.05 is outside the space): the search space "
        "cannot hold the target's own settings, so this study cannot say whether a trial "
        "beats them. Its best is trial 0 (val_loss 2.0000)")
    pruned = study_of([({"lr": 1e-3, "depth": 2, "width": 64}, 2.0)], baseline=False)
    pruned.add_trial(create_trial(state=TrialState.PRUNED, params={"lr": 1e-3},
                                  distributions={"lr": DISTRIBUTIONS["lr"]},
                                  intermediate_values={1: 3.0}, user_attrs={"baseline": True}))
    assert verdict(pruned, "val_loss", "v").startswith(
        "The target's own settings (trial 1, the baseline) were pruned after 1 epoch(s)")


def test_the_verdict_opens_the_report(tmp_path):
    study = study_of([({"lr": 1e-3, "depth": 2, "width": 64}, 2.0),
                      ({"lr": 2e-3, "depth": 3, "width": 64}, 2.1)])
    ctx = ReportContext(synthetic_definition(tmp_path, 4), "v", tmp_path / "v")
    StudyReporter(ctx).write(study, plots=False)
    lines = (tmp_path / "v" / "report.md").read_text().splitlines()
    assert lines[0] == "# Optuna study `v`"
    assert lines[2].startswith("**Verdict:** No trial beat the target's own settings (trial 0, "
                               "the baseline) — widen the space with other levers")
