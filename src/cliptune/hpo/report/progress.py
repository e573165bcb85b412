"""Console output of a study: a progress bar over trials and one line per finished trial."""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from cliptune.hpo.definition import StudyDefinition
from cliptune.hpo.results import best_trial, is_feasible


def trial_counts(study: optuna.Study) -> Counter:
    """Number of trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, ...)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def _format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(trial: FrozenTrial, metric: str, budget: int) -> str:
    """One line about a finished trial: state, value, epochs run, time and params."""
    epochs = len(trial.intermediate_values)
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    head = f"trial {trial.number:>4} {trial.state.name.lower():<8}"
    if trial.state == TrialState.COMPLETE:
        value = f"{metric} {trial.value:.4f}"
    elif trial.intermediate_values:
        last_step = max(trial.intermediate_values)
        value = f"{metric} {trial.intermediate_values[last_step]:.4f} (last)"
    else:
        value = f"{metric} -"
    projected = trial.user_attrs.get("projected_train_seconds")
    cost = "" if projected is None else (
        f", target ~{projected:.0f}s" + ("" if is_feasible(trial) else " (over the limit)"))
    line = (f"{head} {value} | {epochs}/{budget} epochs {seconds:.0f}s{cost} | "
            f"{_format_params(trial.params)}")
    reason = trial.user_attrs.get("fail_reason")
    return f"{line} | {reason}" if reason else line


class StudyProgress:
    """A tqdm bar over this run's trials with best-so-far and state counts (ETA from tqdm)."""

    def __init__(self, total: int | None, definition: StudyDefinition, enabled: bool = True):
        self.definition = definition
        self.enabled = enabled
        self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled,
                        dynamic_ncols=True)

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Print the trial's line and advance the bar."""
        if not self.enabled:
            return
        tqdm.write(trial_line(trial, self.definition.metric, self.definition.budget))
        counts = trial_counts(study)
        postfix = {"complete": counts["COMPLETE"], "pruned": counts["PRUNED"],
                   "failed": counts["FAIL"]}
        if counts["COMPLETE"]:
            postfix["best"] = f"{best_trial(study).value:.4f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar (leaves it on screen)."""
        self.bar.close()
