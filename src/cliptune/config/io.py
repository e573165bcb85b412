"""Configs to and from nested dicts and YAML files, and dotted `--set` overrides, every value
type-checked against its field's annotation (`set_field`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from cliptune.config.sections import CHOICES, ModelConfig, RunConfig, model_preset, validate
from cliptune.errors import ConfigError


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_field(obj: Any, name: str, value: Any, key: str) -> None:
    """Set `obj.name` to `value` checked against its annotation; `key` (dotted) names it in errors."""
    hints = _hints(type(obj))
    if name not in hints:
        valid = ", ".join(f.name for f in fields(obj))
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}")
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.<name>=...")
    value = _coerce(value, tp, key)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}: expected one of {', '.join(CHOICES[key])}, got {value!r}")
    setattr(obj, name, value)


def _section_from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    data = dict(data)
    if cls is ModelConfig and data.get("preset"):
        obj = model_preset(str(data.pop("preset")))
    else:
        obj = cls()
    for name, value in data.items():
        set_field(obj, name, value, f"{prefix}.{name}")
    return obj


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a `RunConfig` from a nested dict (as read from YAML), validating every key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level of the config, got {data!r}")
    config = RunConfig()
    # the section classes by name (data: DataConfig, model: ModelConfig, train: TrainConfig)
    sections = {f.name: f.default_factory for f in fields(RunConfig)
                if dataclasses.is_dataclass(f.default_factory)}
    for name, value in data.items():
        if name in sections:
            setattr(config, name, _section_from_dict(sections[name], value or {}, name))
        else:
            set_field(config, name, value, name)
    validate(config)
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict of `config` (tuples as lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(asdict(config))


def read_yaml(path: str | Path, missing: str) -> Any:
    """Parse a YAML file; a missing file raises `ConfigError(f"{missing}: {path}")`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{missing}: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML experiment file. Errors name the file and the offending key."""
    data = read_yaml(path, "config file not found")
    if data is None:
        raise ConfigError(f"{path} is empty: an experiment file needs at least a name and "
                          "the settings that differ from the defaults (see "
                          "experiments/default.yaml)")
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write `config` as YAML; `load_config` reads it back to an equal config."""
    Path(path).write_text(dump_config(config), encoding="utf-8")


def dump_config(config: RunConfig) -> str:
    """YAML text of `config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def set_value(config: RunConfig, key: str, value: Any) -> None:
    """Set the dotted `key` (e.g. `train.lr`) to `value`, type-checked.

    `model.preset=NAME` replaces the whole model section with that preset.
    """
    if key == "model.preset":
        config.model = model_preset(str(value))
        return
    parts = key.split(".")
    target: Any = config
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in fields(target)}:
            raise ConfigError(f"unknown config key {key!r}; sections are: data, model, train")
        target = getattr(target, part)
        if not dataclasses.is_dataclass(target):
            raise ConfigError(f"unknown config key {key!r}: {part} is not a section")
    set_field(target, parts[-1], value, key)


def apply_override(config: RunConfig, assignment: str) -> None:
    """Apply one `section.key=value` assignment in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. train.lr=3e-4")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    set_value(config, key.strip(), value)


def apply_overrides(config: RunConfig, assignments: list[str] | None) -> RunConfig:
    """Apply every `--set` assignment, then validate the whole config."""
    for assignment in assignments or []:
        apply_override(config, assignment)
    validate(config)
    return config
