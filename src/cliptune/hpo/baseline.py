"""The baseline trial: the target experiment's own values, enqueued as the first trial.

Every report then shows how far the search moved from the configuration it tunes.
"""

from __future__ import annotations

from typing import Any

import optuna

from cliptune.config import RunConfig, config_to_dict
from cliptune.hpo.search_space import (
    CROP_SCALE_MIN,
    HEAD_DIM_KEYS,
    Parameter,
    SearchSpace,
    describe,
)

BASELINE_ATTR = "baseline"  # user attribute of the baseline trial


def _value_of(config: dict[str, Any], key: str) -> Any:
    if key in HEAD_DIM_KEYS:
        tower = HEAD_DIM_KEYS[key]
        width, heads = config["model"][f"{tower}_width"], config["model"][f"{tower}_heads"]
        return width // heads if width % heads == 0 else None
    if key == CROP_SCALE_MIN:  # None: the dataset's own crops, which no entry value names
        scale = config["data"]["crop_scale"]
        return scale[0] if scale is not None and scale[1] == 1.0 else None
    section, _, name = key.rpartition(".")
    return (config[section] if section else config)[name]


def _contains(parameter: Parameter, value: Any) -> bool:
    if parameter.kind == "categorical":
        return value in parameter.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if parameter.kind == "int" and float(value) != int(value):
        return False
    if not parameter.low <= value <= parameter.high:
        return False
    if parameter.step:
        steps = (value - parameter.low) / parameter.step
        return abs(steps - round(steps)) < 1e-9
    return True


def base_params(space: SearchSpace, config: RunConfig) -> tuple[dict[str, Any] | None, str]:
    """The parameter values that reproduce `config`, or (None, why not)."""
    data = config_to_dict(config)
    params: dict[str, Any] = {}
    for parameter, line in zip(space.parameters, describe(space), strict=True):
        values = {repr(_value_of(data, key)) for key in parameter.targets}
        if len(values) > 1:
            return None, (f"the base config sets {', '.join(parameter.targets)} to different "
                          f"values, which entry {parameter.name!r} cannot reproduce")
        value = _value_of(data, parameter.targets[0])
        if parameter.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not _contains(parameter, value):
            return None, f"its {parameter.name} = {value!r} is outside the search space ({line})"
        params[parameter.name] = value
    return params, ""


def enqueue_baseline(study: optuna.Study, space: SearchSpace, config: RunConfig) -> str | None:
    """Enqueue the base config as the next trial; returns why not when it cannot be."""
    params, reason = base_params(space, config)
    if params is None:
        return reason
    study.enqueue_trial(params, user_attrs={BASELINE_ATTR: True})
    return None


def baseline_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's baseline trial, if any: the first one marked so that completed, else
    the first one marked so (a retried baseline carries the mark too)."""
    marked = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_ATTR)]
    complete = [t for t in marked if t.state == optuna.trial.TrialState.COMPLETE]
    return (complete or marked or [None])[0]
