"""Experiment configuration: dataclasses, model presets, YAML I/O and dotted overrides.

A run is described by one `RunConfig` holding a `DataConfig`, a `ModelConfig` and a
`TrainConfig` (`sections`). YAML files in `experiments/` mirror that nesting (`io`);
`model.preset` names a preset whose fields the rest of the `model` section overrides.
Overrides such as `train.lr=3e-4` are type-checked (`io`): an unknown key or a wrong
type raises `ConfigError` naming the key and what was expected; `sections.validate`
checks ranges and cross-field constraints.
"""

from cliptune.config.io import (
    apply_override,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    read_yaml,
    save_config,
    set_value,
)
from cliptune.config.sections import (
    CHOICES,
    PRESETS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    model_config_for,
    model_preset,
    validate,
)

__all__ = [
    "CHOICES",
    "PRESETS",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_override",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "model_config_for",
    "model_preset",
    "read_yaml",
    "save_config",
    "set_value",
    "validate",
]
