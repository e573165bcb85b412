"""Setting one field of a config section from a YAML or command-line value, type-checked."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any

from cliptune.config.sections import CHOICES
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
