"""What a study tunes and at what fidelity.

A study file (experiments/hpo.yaml) names the *target* experiment being tuned and the
reduced *fidelity* its trials run at:

    target: default.yaml        # an experiment file, relative to the study file
    fidelity:
      epochs: 12                # per-trial budget (the pruner's maximum resource)
      max_samples: 2000         # training images per trial (null: all)
      max_eval_samples: 300     # validation images per trial (null: all)
      set:                      # cost-only settings of the trials
        train.figure_images: 0
    max_train_seconds: 300      # optional: the target's training time limit (null: none)

Trials train `target + fidelity + sampled parameters`; `best_config.yaml` and
`--retrain-best` train `target + best parameters` at the target's own fidelity: all
its data, its epochs, the standard test split. `max_train_seconds` limits the target's
training time with a trial's parameters, projected from the trial's first epoch; trials
over it are infeasible (see `time_limit`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliptune.config import RunConfig, load_config, read_yaml, set_value, validate
from cliptune.errors import ConfigError

FIDELITY_KEYS = {"epochs", "max_samples", "max_eval_samples", "set"}


@dataclass
class Fidelity:
    """The reduced budget every trial of a study gets."""

    epochs: int | None = None  # None: the target's epochs
    max_samples: int | None = None  # training images per trial; None: the target's
    max_eval_samples: int | None = None  # val images per trial; None: the target's
    overrides: dict[str, Any] = field(default_factory=dict)  # cost-only keys (figures, ...)

    def apply(self, target: RunConfig) -> RunConfig:
        """The config every trial starts from: `target` at this fidelity (validated)."""
        config = copy.deepcopy(target)
        if self.epochs is not None:
            config.train.epochs = self.epochs
        if self.max_samples is not None:
            config.data.max_samples = _smaller(self.max_samples, target.data.max_samples)
        if self.max_eval_samples is not None:
            config.data.max_eval_samples = _smaller(self.max_eval_samples,
                                                    target.data.max_eval_samples)
        for key, value in self.overrides.items():
            set_value(config, key, value)
        validate(config)
        return config

    def record(self) -> dict[str, Any]:
        """Plain dict for the study's fingerprint and the reports."""
        return {"epochs": self.epochs, "max_samples": self.max_samples,
                "max_eval_samples": self.max_eval_samples, "set": dict(self.overrides)}

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> Fidelity:
        """The `Fidelity` whose flattened `record()` is `flat` (a study's fingerprint part)."""
        return cls(epochs=flat.get("epochs"), max_samples=flat.get("max_samples"),
                   max_eval_samples=flat.get("max_eval_samples"),
                   overrides={k[4:]: v for k, v in flat.items() if k.startswith("set.")})


def _smaller(cap: int, existing: int | None) -> int:
    return cap if existing is None else min(cap, existing)


@dataclass
class StudyPlan:
    """The target experiment (with the command line's changes), the trials' fidelity and
    the limit on the target's training time."""

    target: RunConfig
    fidelity: Fidelity
    target_path: str = ""
    max_train_seconds: float | None = None  # None: no limit

    def limits(self) -> dict[str, Any]:
        """The study fingerprint's `limits` part."""
        return {"max_train_seconds": self.max_train_seconds}

    def trial_base(self) -> RunConfig:
        """Target at the study's fidelity: what every trial starts from."""
        return self.fidelity.apply(self.target)


def _positive_or_none(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive whole number or null, got {value!r}")
    return value


def check_time_limit(value: Any, where: str) -> float | None:
    """A `max_train_seconds` value: positive seconds, or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where}: expected positive seconds or null (no limit), got {value!r}")
    return float(value)


def parse_fidelity(raw: Any, source: str) -> Fidelity:
    """A `Fidelity` from the `fidelity:` mapping of a study file."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `fidelity` must be a mapping of {', '.join(FIDELITY_KEYS)}")
    unknown = set(raw) - FIDELITY_KEYS
    if unknown:
        raise ConfigError(f"{source}: unknown fidelity key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(FIDELITY_KEYS))}")
    overrides = raw.get("set") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: fidelity `set` must map config keys to values")
    return Fidelity(
        epochs=_positive_or_none(raw.get("epochs"), f"{source}: fidelity.epochs"),
        max_samples=_positive_or_none(raw.get("max_samples"), f"{source}: fidelity.max_samples"),
        max_eval_samples=_positive_or_none(raw.get("max_eval_samples"),
                                           f"{source}: fidelity.max_eval_samples"),
        overrides={str(k): v for k, v in overrides.items()},
    )


def load_plan(path: str | Path, target: str | Path | None = None) -> StudyPlan:
    """Read a study file; `target` (the --config flag) replaces the file's target.

    Errors name the file and the key.
    """
    path = Path(path)
    data = read_yaml(path, "--study-config: file not found")
    if not isinstance(data, dict) or "target" not in data:
        raise ConfigError(f"{path}: expected `target: <experiment file>` and `fidelity:`")
    unknown = set(data) - {"target", "fidelity", "max_train_seconds"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                          "a study file holds `target`, `fidelity` and `max_train_seconds`")
    fidelity = parse_fidelity(data.get("fidelity"), str(path))
    limit = check_time_limit(data.get("max_train_seconds"), f"{path}: max_train_seconds")
    target_path = Path(target) if target is not None else path.parent / str(data["target"])
    plan = StudyPlan(load_config(target_path), fidelity, str(target_path), limit)
    try:
        plan.trial_base()
    except ConfigError as err:
        raise ConfigError(f"{path}: fidelity: {err}") from None
    return plan
