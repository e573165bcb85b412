"""The study's verdict, in words at the top of report.md: did a trial beat the target's
own settings (the baseline trial), and what to do next.

Either "Trial N is better than the target's own settings by X at trial fidelity" (then
`--retrain-best --seeds 3` decides whether it holds at full fidelity), or "No trial beat
the target's own settings ... widen ...", naming the parameters whose best values sit at
an edge of their range (the search pressed against it), or else that the space lacks the
levers that matter. A study without a baseline (the space cannot hold the target's own
values) says so: it cannot tell.
"""

from __future__ import annotations

import math

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from cliptune.hpo.results import best_trial, is_feasible, ranked
from cliptune.hpo.search_space import baseline_trial

EDGE = 0.1  # a value in the outer tenth of its range (log range for log parameters) is at an edge
EDGE_TRIALS = 3  # the top complete trials whose values are looked at


def _position(value, dist) -> float | None:
    """Where `value` sits in `dist`, 0 (low) .. 1 (high); None where edges mean nothing."""
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        if dist.high <= dist.low:
            return None
        scale = math.log if dist.log else float
        return (scale(value) - scale(dist.low)) / (scale(dist.high) - scale(dist.low))
    if isinstance(dist, CategoricalDistribution):
        numeric = [c for c in dist.choices if isinstance(c, (int, float))
                   and not isinstance(c, bool)]
        if len(numeric) < 3 or len(numeric) != len(dist.choices):
            return None  # two choices are both edges; unordered ones have none
        ordered = sorted(numeric)
        return ordered.index(value) / (len(ordered) - 1)
    return None


def _bounds(dist) -> tuple:
    if isinstance(dist, CategoricalDistribution):
        return min(dist.choices), max(dist.choices)
    return dist.low, dist.high


def edge_parameters(trials: list[FrozenTrial]) -> list[str]:
    """The parameters whose values in most of `trials` sit at the same edge of their
    range, each as "name at its upper edge (high)"."""
    found = []
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    for name in names:
        having = [t for t in trials if name in t.params]
        positions = [_position(t.params[name], t.distributions[name]) for t in having]
        if any(p is None for p in positions):
            continue
        low, high = _bounds(having[0].distributions[name])
        for side, bound, at in (("lower", low, [p <= EDGE for p in positions]),
                                ("upper", high, [p >= 1 - EDGE for p in positions])):
            if 2 * sum(at) > len(at):
                found.append(f"{name} beyond its {side} edge ({bound:g})")
    return found


def retrain_command(study_name: str) -> str:
    """The command that retrains the best and the base configuration at full fidelity."""
    return (f"`python src/optimize.py --study-name {study_name} --trials 0 --retrain-best "
            "--seeds 3`")


def _gain(best: FrozenTrial, baseline: FrozenTrial, minimize: bool) -> float:
    return (baseline.value - best.value) if minimize else (best.value - baseline.value)


def verdict(study: optuna.Study, metric: str, study_name: str) -> str:
    """The verdict in words (see the module docstring)."""
    best, baseline = best_trial(study), baseline_trial(study)
    if best is None:
        return "No trial has completed yet: no verdict."
    retrain = retrain_command(study_name)
    best_words = f"trial {best.number} ({metric} {best.value:.4f})"
    if baseline is None:
        note = study.user_attrs.get("baseline_note", "").removeprefix("no baseline trial: ")
        return (f"There is no baseline trial ({note or 'the study has none'}): the search "
                "space cannot hold the target's own settings, so this study cannot say whether "
                f"a trial beats them. Its best is {best_words}; {retrain} compares it with the "
                "target at full fidelity.")
    if baseline.state != TrialState.COMPLETE:
        state = (f"were pruned after {len(baseline.intermediate_values)} epoch(s)"
                 if baseline.state == TrialState.PRUNED else
                 f"have not completed (trial {baseline.state.name.lower()})")
        return (f"The target's own settings (trial {baseline.number}, the baseline) {state}; "
                f"the best is {best_words}; {retrain} decides whether it beats them at full "
                "fidelity.")
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    if best.number != baseline.number:
        gain = _gain(best, baseline, minimize)
        if gain > 0:
            return (f"Trial {best.number} is better than the target's own settings by "
                    f"{gain:.4g} {metric} at trial fidelity ({best.value:.4f} against "
                    f"{baseline.value:.4f}, trial {baseline.number}); {retrain} decides "
                    "whether it holds at full fidelity.")
        if is_feasible(best) and not is_feasible(baseline):
            return (f"Trial {best.number} is the best that keeps to the time limit, which the "
                    f"target's own settings (trial {baseline.number}) exceed; it is "
                    f"{-gain:.4g} {metric} behind them at trial fidelity. {retrain} compares "
                    "the two at full fidelity.")
    return _no_winner(study, baseline)


def _no_winner(study: optuna.Study, baseline: FrozenTrial) -> str:
    head = (f"No trial beat the target's own settings (trial {baseline.number}, the baseline) "
            "— widen ")
    complete = ranked(study)
    edges = edge_parameters(complete[:EDGE_TRIALS])
    more = (f" Only {len(complete)} trial(s) completed: more trials (or a later first rung, "
            "see --check-fidelity) also widen what the search sees." if len(complete) < 5
            else "")
    if edges:
        return (head + f"the space: {'; '.join(edges)}. The best trials sit at those edges, "
                "so the better settings may lie beyond them: move the bounds in the search "
                "space file (--search-space)." + more)
    return (head + "the space with other levers: no parameter's best values sit at an edge "
            "of its range, so within these ranges the target's settings are as good as any "
            "the trials found. Search what the space leaves fixed (the recipe levers: "
            "train.loss, model.patch_dropout, data.crop_scale_min, ...; see "
            "experiments/search_space.yaml), or give the trials more fidelity (--check-fidelity "
            "tells whether they rank as the full run does)." + more)
