"""The hyperparameter search space: Optuna suggestions -> config values, checked against a
config before any trial runs. `search_space_file` reads it from YAML."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from cliptune.config import RunConfig, config_from_dict, config_to_dict
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

