"""Configs to and from nested dicts and YAML files, and dotted `--set` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from cliptune.config.fields import set_field
from cliptune.config.sections import DataConfig, ModelConfig, RunConfig, TrainConfig, model_preset
from cliptune.config.validation import validate
from cliptune.errors import ConfigError


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
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
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
