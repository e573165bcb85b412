"""The study's design where it follows the budget and the measurements.

TPE's random start-up: TPE (and GP) draw at random until `n_startup_trials` trials of
the study have finished. Optuna's default, 10, is a fifth of a 50-trial study; here the
random draws are a tenth of the study's trials (at least 3), on top of the enqueued
trials (the baseline, warm starts), which count among the finished trials too.

Hyperband does not multiply that start-up in the Optuna this project pins (5.x):
its docstring says TPE sees only the trials of the current trial's bracket, but TPE
reads the trials through `Study._get_trials`, which `_BracketStudy` does not filter,
so every bracket's trials (complete and pruned, ranked by how far they got) feed one
model and one start-up. tests/test_hpo_design.py holds Optuna to that.

`--pruner auto` (the default): Hyperband whose first rung is where the study's
recorded fidelity check (`optuna-results/<study>/fidelity_check.json`, written by
`--check-fidelity K`) says the trials rank as the full run does: the earliest rung with
Spearman >= GOOD_SPEARMAN, never before `--min-epochs`. When every rung it measured
ranks poorly, trials are not pruned (judging them there would be close to a coin flip).
Without a check (or one of another budget or metric): Hyperband from `--min-epochs`,
as before. With the shipped 12-epoch budget and a first rung at epoch 5, Hyperband has
a single bracket: successive halving judged at epoch 5.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import optuna

from cliptune.hpo.definition import StudySettings
from cliptune.hpo.report.files import FIDELITY_CHECK
from cliptune.hpo.search_space import BASELINE_ATTR
from cliptune.hpo.warm_start import WARM_ATTR

GOOD_SPEARMAN = 0.7  # a fidelity (or rung) that ranks at least this well is trusted
STARTUP_FRACTION = 0.1  # of the study's trials, drawn at random before TPE models
MIN_STARTUP = 3
ENQUEUED_ATTRS = (BASELINE_ATTR, WARM_ATTR)  # trials the study enqueued itself


def startup_trials(trials: int, enqueued: int = 0) -> int:
    """TPE's `n_startup_trials` for a study of `trials` trials with `enqueued` enqueued
    ones: a tenth of the trials drawn at random (at least 3), after the enqueued."""
    return enqueued + max(MIN_STARTUP, round(STARTUP_FRACTION * trials))


def enqueued_trials(study: optuna.Study) -> int:
    """How many of the study's trials were enqueued by the driver (baseline, warm starts)."""
    return sum(any(t.user_attrs.get(attr) for attr in ENQUEUED_ATTRS)
               for t in study.get_trials(deepcopy=False))


def read_fidelity_check(results_dir: str | Path, study_name: str) -> dict | None:
    """The study's recorded fidelity check (fidelity_check.json), or None."""
    path = Path(results_dir) / study_name / f"{FIDELITY_CHECK}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def first_rung(check: dict | None, budget: int, metric: str,
               min_epochs: int = 1) -> tuple[int | None, str]:
    """Where `--pruner auto` judges trials first, and why in words.

    Returns (epoch, why) for Hyperband's first rung, or (None, why) for no pruning
    (every measured rung from `min_epochs` on ranks poorly)."""
    if check is None:
        return min_epochs, ("no fidelity check recorded for this study, so Hyperband judges "
                            f"from epoch {min_epochs} (`--check-fidelity 8` measures where "
                            "trials rank as the full run does)")
    recorded = check.get("reduced_fidelity", {}).get("epochs")
    if recorded != budget or check.get("metric") != metric:
        return min_epochs, (f"the recorded fidelity check ({check.get('metric')}, {recorded} "
                            f"epochs per trial) is not of this study's trials ({metric}, "
                            f"{budget} epochs), so Hyperband judges from epoch {min_epochs}")
    rungs = sorted((int(name.split()[1]), a["spearman"]) for name, a in check["agreement"].items()
                   if name.startswith("epoch ") and int(name.split()[1]) >= min_epochs)
    if not rungs:
        return min_epochs, (f"the fidelity check measured no rung from epoch {min_epochs} on, "
                            f"so Hyperband judges from epoch {min_epochs}")
    measured = ", ".join(f"epoch {e}: {_rho(rho)}" for e, rho in rungs)
    good = [epoch for epoch, rho in rungs if rho >= GOOD_SPEARMAN]
    if not good:
        return None, (f"no rung the fidelity check measured ranks trials as the full run does "
                      f"(Spearman {measured}; trusted from {GOOD_SPEARMAN}), so no trial is "
                      "pruned: each is judged at its end (`--pruner hyperband` prunes anyway)")
    return good[0], (f"the fidelity check ranks epoch {good[0]} as the full run does "
                     f"(Spearman {measured}; trusted from {GOOD_SPEARMAN})")


def _rho(value: float) -> str:
    return "undefined" if not math.isfinite(value) else f"{value:.2f}"


def resolve_pruner(settings: StudySettings, budget: int,
                   metric: str) -> tuple[StudySettings, str | None]:
    """`settings` with `--pruner auto` made concrete for trials of `budget` epochs judged
    on `metric` (see the module docstring), and the choice with its reason in words;
    other pruners unchanged (None)."""
    if settings.pruner != "auto":
        return settings, None
    check = read_fidelity_check(settings.results_dir, settings.study_name)
    epoch, why = first_rung(check, budget, metric, settings.min_epochs)
    if epoch is None:
        return replace(settings, pruner="none"), f"pruner auto: no pruning: {why}"
    return (replace(settings, pruner="hyperband", min_epochs=epoch),
            f"pruner auto: Hyperband, first rung at epoch {epoch}: {why}")
