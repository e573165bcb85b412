"""The hyperparameter search space: its YAML file, Optuna suggestions -> config values,
and the baseline (the target's own values, the inverse of `SearchSpace.apply`).

A search space file holds one mapping, `parameters`, of entries such as

    lr:
      type: float            # float | int | categorical
      low: 1.0e-4
      high: 3.0e-3
      log: true              # optional; float and int
      step: null             # optional; float and int (not together with log)
      target: train.lr       # one config key or a list of keys

`choices: [...]` replaces low/high for `categorical`. One entry can set several keys
(`target: [model.vision_layers, model.text_layers]` searches one depth for both
towers). Besides the config keys, `model.vision_head_dim` and `model.text_head_dim`
are accepted: they set the tower's width to heads x head_dim, so the head count
always divides the width; and `data.crop_scale_min`, which sets `data.crop_scale` to
[value, 1] (a list-valued key is not one Optuna parameter). Every entry is checked, every error names file and entry,
and the space is checked against a config before any trial runs.

The baseline trial is the target experiment's own values, enqueued as the first trial:
every report then shows how far the search moved from the configuration it tunes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from cliptune.config import RunConfig, config_from_dict, config_to_dict, read_yaml
from cliptune.errors import ConfigError

ParamValue = bool | int | float | str

HEAD_DIM_KEYS = {"model.vision_head_dim": "vision", "model.text_head_dim": "text"}
CROP_SCALE_MIN = "data.crop_scale_min"  # sets data.crop_scale = [value, 1]
# (divisor, dividend): the first key must divide the second in every trial.
DIVISIBILITY = (
    ("model.vision_heads", "model.vision_width"),
    ("model.text_heads", "model.text_width"),
    ("model.patch_size", "model.image_size"),
)
MAX_ENUMERATED = 10_000  # int ranges up to this size are checked value by value


@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter and the config keys it sets."""

    name: str
    kind: str  # float | int | categorical
    targets: tuple[str, ...]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[ParamValue, ...] = ()

    def suggest(self, trial: optuna.Trial) -> ParamValue:
        """Ask `trial` for a value of this parameter."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> list[ParamValue] | None:
        """Every value this parameter can take, or None when there are too many to list."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            values = range(int(self.low), int(self.high) + 1, step)
            return list(values) if len(values) <= MAX_ENUMERATED else None
        return None

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take (in its range and step, or
        among its choices)."""
        return _contains(self, value)

    def extremes(self) -> list[ParamValue]:
        """The values worth checking against the config: both ends, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a study, read from `source` (a file name, for messages)."""

    parameters: tuple[Parameter, ...]
    source: str = "<search space>"

    @property
    def names(self) -> list[str]:
        """Parameter names, as Optuna records them."""
        return [p.name for p in self.parameters]

    def suggest(self, trial: optuna.Trial) -> dict[str, ParamValue]:
        """Sample one value per parameter from `trial`."""
        return {p.name: p.suggest(trial) for p in self.parameters}

    def apply(self, config: RunConfig, params: Mapping[str, ParamValue]) -> RunConfig:
        """A new, validated config: `config` with the keys of `params` set.

        Raises `ConfigError` for an impossible combination (naming the keys).
        """
        data = config_to_dict(config)
        head_dims: dict[str, ParamValue] = {}
        for parameter in self.parameters:
            if parameter.name not in params:
                continue
            for key in parameter.targets:
                if key in HEAD_DIM_KEYS:
                    head_dims[HEAD_DIM_KEYS[key]] = params[parameter.name]
                elif key == CROP_SCALE_MIN:
                    data["data"]["crop_scale"] = [params[parameter.name], 1.0]
                else:
                    _set_nested(data, key, params[parameter.name])
        for tower, head_dim in head_dims.items():
            _check_int(f"model.{tower}_head_dim", head_dim)
            data["model"][f"{tower}_width"] = data["model"][f"{tower}_heads"] * head_dim
        return config_from_dict(data)

    def check_against(self, config: RunConfig) -> None:
        """Fail early, naming the file and entry, when some trial could get a bad config.

        Checks that every target exists and accepts the entry's values, and that no
        combination can break a divisibility rule (heads | width, patch | image size).
        """
        self._check_divisibility(config)
        for parameter in self.parameters:
            for value in parameter.extremes():
                try:
                    self.apply(config, {parameter.name: value})
                except ConfigError as err:
                    raise ConfigError(
                        f"{self.source}: entry {parameter.name!r} = {value!r}: {err}"
                    ) from None

    def _check_divisibility(self, config: RunConfig) -> None:
        data = config_to_dict(config)
        by_key = {key: p for p in self.parameters for key in p.targets}
        for divisor_key, dividend_key in DIVISIBILITY:
            tower = dividend_key.split(".")[1].split("_")[0]
            if f"model.{tower}_head_dim" in by_key:
                continue  # width is derived from heads, divisible by construction
            divisor, dividend = by_key.get(divisor_key), by_key.get(dividend_key)
            if divisor is None and dividend is None:
                continue
            divisors = _values(divisor, data, divisor_key, self.source)
            dividends = _values(dividend, data, dividend_key, self.source)
            for d, n in itertools.product(divisors, dividends):
                if not isinstance(d, int) or not isinstance(n, int) or d <= 0 or n % d:
                    names = " and ".join(
                        repr(p.name) for p in (divisor, dividend) if p is not None
                    )
                    raise ConfigError(
                        f"{self.source}: entry {names} can give {divisor_key}={d} with "
                        f"{dividend_key}={n}, which {divisor_key} must divide; "
                        + _divisibility_hint(tower, divisor_key)
                    )


def _divisibility_hint(tower: str, divisor_key: str) -> str:
    if divisor_key.endswith("_heads"):
        return (
            f"search model.{tower}_head_dim instead of the width (width = heads x head_dim), "
            "or use choices that always divide"
        )
    return "use patch sizes that divide model.image_size"


def _values(
    parameter: Parameter | None, data: dict[str, Any], key: str, source: str
) -> list[ParamValue]:
    if parameter is None:
        section, name = key.split(".")
        return [data[section][name]]
    values = parameter.candidates()
    if values is None:
        raise ConfigError(
            f"{source}: entry {parameter.name!r} sets {key}, which must divide or be divided "
            "by another key; give it `choices` (type: categorical) or a small int range"
        )
    return values


def _check_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")


def _set_nested(data: dict[str, Any], key: str, value: Any) -> None:
    *sections, name = key.split(".")
    target = data
    for section in sections:
        target = target[section]
    target[name] = value


def describe(space: SearchSpace) -> list[str]:
    """One human-readable line per parameter (for the reports and the study's attributes)."""
    lines = []
    for p in space.parameters:
        if p.kind == "categorical":
            rng = "{" + ", ".join(map(str, p.choices)) + "}"
        else:
            rng = f"[{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
            rng += f" step {p.step:g}" if p.step else ""
        lines.append(f"{p.name}: {p.kind} {rng} -> {', '.join(p.targets)}")
    return lines


# Keys the driver owns: the trial's name and folders, and the per-trial epoch budget.
RESERVED_KEYS = {
    "name": "the driver names each trial <study>/trial_<n>",
    "runs_dir": "set it in the base config (--config) instead",
    "checkpoints_dir": "set it in the base config (--config) instead",
    "train.epochs": "the per-trial budget is --epochs",
    "model.preset": "search the model fields themselves",
}
ENTRY_FIELDS = {"type", "low", "high", "log", "step", "choices", "target"}


def _known_keys() -> set[str]:
    keys = {*HEAD_DIM_KEYS, CROP_SCALE_MIN}
    config = RunConfig()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(f"{f.name}.{sub.name}" for sub in dataclasses.fields(value))
        else:
            keys.add(f.name)
    return keys


def _number(value: Any, where: str, field: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: `{field}` must be a number, got {value!r}")
    return value


def _parse_targets(raw: Any, where: str, known: set[str]) -> tuple[str, ...]:
    targets = [raw] if isinstance(raw, str) else raw
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(
            f"{where}: `target` must be a config key or a list of keys, e.g. train.lr"
        )
    for key in targets:
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where}: {key} cannot be searched: {RESERVED_KEYS[key]}")
        if key not in known:
            raise ConfigError(
                f"{where}: unknown target {key!r}; targets are config keys such as "
                "train.lr, model.vision_layers, model.init_temperature"
            )
    return tuple(targets)


def parse_entry(name: str, raw: Any, source: str, known: set[str] | None = None) -> Parameter:
    """Validate one search-space entry and turn it into a `Parameter`."""
    where = f"{source}: entry {name!r}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with type, target and a range or choices")
    unknown = set(raw) - ENTRY_FIELDS
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(ENTRY_FIELDS))}"
        )
    if "target" not in raw:
        raise ConfigError(f"{where}: missing `target` (the config key(s) it sets)")
    targets = _parse_targets(raw["target"], where, known or _known_keys())
    kind = raw.get("type")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty `choices` list")
        extra = {"low", "high", "log", "step"} & set(raw)
        if extra:
            raise ConfigError(f"{where}: categorical takes `choices`, not {', '.join(extra)}")
        for choice in choices:
            if not isinstance(choice, (bool, int, float, str)):
                raise ConfigError(f"{where}: choices must be numbers, strings or booleans")
        return Parameter(name, kind, targets, choices=tuple(choices))
    if kind not in ("float", "int"):
        raise ConfigError(f"{where}: `type` must be float, int or categorical, got {kind!r}")
    if "choices" in raw:
        raise ConfigError(f"{where}: `choices` needs type: categorical")
    for field in ("low", "high"):
        if field not in raw:
            raise ConfigError(f"{where}: {kind} needs `low` and `high`")
    low, high = _number(raw["low"], where, "low"), _number(raw["high"], where, "high")
    step = None if raw.get("step") is None else _number(raw["step"], where, "step")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: `log` must be true or false, got {log!r}")
    if kind == "int":
        for field, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and float(value) != int(value):
                raise ConfigError(f"{where}: int entries need whole numbers; `{field}` is {value}")
    try:  # Optuna's own checks: low <= high, log needs low > 0, no step with log
        if kind == "int":
            optuna.distributions.IntDistribution(
                int(low), int(high), log=log, step=int(step or 1)
            )
        else:
            optuna.distributions.FloatDistribution(low, high, log=log, step=step)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return Parameter(name, kind, targets, low=low, high=high, log=log, step=step)


def search_space_from_dict(data: Any, source: str = "<search space>") -> SearchSpace:
    """Build a `SearchSpace` from the parsed YAML mapping `{parameters: {...}}`."""
    if not isinstance(data, dict) or set(data) != {"parameters"}:
        raise ConfigError(f"{source}: expected one top-level key, `parameters`")
    entries = data["parameters"]
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{source}: `parameters` must map names to entries (at least one)")
    known = _known_keys()
    parameters = tuple(parse_entry(str(n), raw, source, known) for n, raw in entries.items())
    owners: dict[str, str] = {}
    for parameter in parameters:
        for key in parameter.targets:
            if key in owners:
                raise ConfigError(
                    f"{source}: entries {owners[key]!r} and {parameter.name!r} both set {key}"
                )
            owners[key] = parameter.name
    for tower in ("vision", "text"):
        if f"model.{tower}_head_dim" in owners and f"model.{tower}_width" in owners:
            raise ConfigError(
                f"{source}: entries {owners[f'model.{tower}_head_dim']!r} and "
                f"{owners[f'model.{tower}_width']!r} both set the {tower} width "
                "(head_dim sets width = heads x head_dim); keep one"
            )
    return SearchSpace(parameters, source)


def space_to_dict(space: SearchSpace) -> dict[str, Any]:
    """The `{parameters: {...}}` mapping `search_space_from_dict` reads back (what a
    study records, so a driver that joins it needs no search space file)."""
    entries: dict[str, Any] = {}
    for p in space.parameters:
        entry: dict[str, Any] = {"type": p.kind, "target": list(p.targets)}
        if p.kind == "categorical":
            entry["choices"] = list(p.choices)
        else:
            entry.update(low=p.low, high=p.high, log=p.log, step=p.step)
        entries[p.name] = entry
    return {"parameters": entries}


def load_search_space(path: str | Path) -> SearchSpace:
    """Read a search space YAML file; every error names the file and the entry."""
    data = read_yaml(path, "--search-space: file not found")
    return search_space_from_dict(data, str(path))


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
