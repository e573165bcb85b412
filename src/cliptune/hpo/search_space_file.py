"""Reading a search space from YAML: every entry checked, every error naming file and entry.

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
[value, 1] (a list-valued key is not one Optuna parameter).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna

from cliptune.config import RunConfig, read_yaml
from cliptune.errors import ConfigError
from cliptune.hpo.search_space import CROP_SCALE_MIN, HEAD_DIM_KEYS, Parameter, SearchSpace

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
