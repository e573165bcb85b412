"""Parameter importances that say what they rest on.

Optuna's evaluators use COMPLETE trials only; with Hyperband most trials are
pruned, so those figures may rest on a handful of trials. A second figure uses
every trial that reported values (pruned ones included) at the deepest epoch all of
them reached: more trials, earlier signal. The importance plot uses the complete
trials, or that second set while fewer than 2 trials have completed (`plot_source`). Each result carries its trial count and
a warning when that count is small.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

MIN_TRIALS = 20  # below this, importances are mostly noise


@dataclass
class Importances:
    """One importance figure: values per parameter, what it rests on, and notes."""

    title: str
    values: dict[str, float]
    trials: int
    note: str | None = None


def importance_evaluator() -> optuna.importance.BaseImportanceEvaluator:
    """PED-ANOVA (numpy only), set explicitly rather than relying on Optuna's default."""
    return optuna.importance.PedAnovaImportanceEvaluator()


def _evaluate(study: optuna.Study, title: str, count: int) -> Importances:
    if count < 2:
        return Importances(title, {}, count, f"needs at least 2 trials (has {count})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = optuna.importance.get_param_importances(study, evaluator=importance_evaluator())
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if count < MIN_TRIALS:
        notes.insert(0, f"only {count} trials: treat these as a rough hint "
                        f"(about {MIN_TRIALS} or more make them meaningful)")
    return Importances(title, values, count, " ".join(notes) or None)


def _searched(trial: FrozenTrial, names: set[str]) -> bool:
    return names <= set(trial.params)


def complete_importances(study: optuna.Study) -> Importances:
    """Importances over the complete trials (the study's final values)."""
    names = {n for t in study.get_trials(deepcopy=False) for n in t.params}
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if _searched(t, names)]
    return _evaluate(study, "complete trials, final value", len(complete))


def deepest_common_epoch(trials: list[FrozenTrial]) -> int | None:
    """The deepest epoch every trial in `trials` reported (None without reports)."""
    reached = [max(t.intermediate_values) for t in trials if t.intermediate_values]
    return min(reached) if reached and len(reached) == len(trials) else None


def rung_study(study: optuna.Study) -> tuple[optuna.Study, int, int] | None:
    """An in-memory copy of `study` whose trials are its complete and pruned ones, each
    valued at the deepest epoch they all reached: (copy, epoch, trials), or None while
    no trial has reported a value."""
    names = {n for t in study.get_trials(deepcopy=False) for n in t.params}
    trials = [t for t in study.get_trials(deepcopy=False,
                                          states=(TrialState.COMPLETE, TrialState.PRUNED))
              if t.intermediate_values and _searched(t, names)]
    epoch = deepest_common_epoch(trials)
    if epoch is None:
        return None
    copy = optuna.create_study(direction=study.direction)
    copy.add_trials([
        optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                  value=t.intermediate_values[epoch])
        for t in trials if epoch in t.intermediate_values
    ])
    return copy, epoch, len(trials)


def rung_importances(study: optuna.Study) -> Importances:
    """Importances over complete and pruned trials, by their value at the deepest epoch
    they all reached (`rung_study`)."""
    found = rung_study(study)
    if found is None:
        return Importances("all trials", {}, 0, "no trial has reported a value yet")
    copy, epoch, count = found
    return _evaluate(copy, f"complete and pruned trials, value at epoch {epoch}", count)


def plot_source(study: optuna.Study) -> tuple[optuna.Study, str] | None:
    """What the importance plot is drawn from, and in words: the study's complete trials
    when it has 2 or more, else every complete and pruned trial at the deepest epoch they
    all reached (`rung_study`); None when neither has 2 trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2:
        return study, f"{len(complete)} complete trials, final value"
    found = rung_study(study)
    if found is None or found[2] < 2:
        return None
    copy, epoch, count = found
    return copy, (f"{count} complete and pruned trials, value at epoch {epoch} (the deepest "
                  f"epoch all reached; fewer than 2 trials completed)")


def all_importances(study: optuna.Study) -> list[Importances]:
    """Both figures, each computed independently: a failure in one is its note."""
    results = []
    for compute, title in ((complete_importances, "complete trials, final value"),
                           (rung_importances, "complete and pruned trials")):
        try:
            results.append(compute(study))
        except Exception as err:  # noqa: BLE001 - a report must never stop a study
            results.append(Importances(title, {}, 0, f"not computed: {type(err).__name__}: {err}"))
    return results
