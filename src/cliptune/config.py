"""Experiment configuration: dataclasses, model presets, YAML I/O and dotted overrides.

A run is described by one `RunConfig` holding a `DataConfig`, a `ModelConfig` and a
`TrainConfig`. YAML files in `experiments/` mirror that nesting; `model.preset` names
a preset whose fields the rest of the `model` section overrides. Overrides such as
`train.lr=3e-4` are type-checked: an unknown key or a wrong type raises `ConfigError`
naming the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from cliptune.errors import ConfigError


@dataclass
class DataConfig:
    """Where the image-caption pairs come from and how they are split and loaded."""

    source: str = "auto"  # auto | shapes | flickr30k | folder
    data_dir: str | None = None  # local copy (flickr30k layout) or a folder dataset
    format: str = "auto"  # folder format: auto | kaggle | captions_txt | tsv | coco
    split_file: str | None = None  # JSON {"train": [...], ...}, Karpathy's json or txt trio
    split_seed: int = 0  # decides the random split; independent of the run's seed
    cache_dir: str | None = None  # None: $CLIPTUNE_CACHE or ~/.cache/cliptune
    kaggle_handle: str = "hsankesara/flickr-image-dataset/versions/1"
    download_timeout: float = 5.0  # seconds for the `auto` reachability probe
    val_size: float | None = None  # >= 1: images, < 1: fraction; None: per-source default
    test_size: float | None = None
    shapes_images: int = 6000
    max_samples: int | None = None  # cap on training images (quick runs)
    max_eval_samples: int | None = None  # cap on val and test images
    augment: bool = True
    num_workers: int | str = "auto"  # reader processes; auto: 0 on CPU, a few for a GPU


@dataclass
class ModelConfig:
    """Architecture of both towers. See `PRESETS` for named configurations."""

    preset: str | None = None
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    context_length: int = 32
    vocab_size: int = 4096
    pad_token_id: int = 0
    mlp_ratio: float = 4.0
    activation: str = "gelu"  # gelu | quick_gelu
    dropout: float = 0.0
    init_temperature: float = 0.07
    learnable_temperature: bool = True
    grad_checkpointing: bool = False


@dataclass
class TrainConfig:
    """Optimisation, precision, evaluation and checkpointing of one run."""

    epochs: int = 10
    batch_size: int = 128  # GLOBAL batch: split evenly over the ranks of a torchrun job
    eval_batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_fraction: float = 0.05  # of all optimizer steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    grad_accum_steps: int = 1
    precision: str = "auto"  # auto (bf16 where supported, else fp16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    all_captions: bool = False  # every caption each epoch instead of one random per image
    hard_negative_weight: float = 0.0
    hard_negative_k: int = 5
    hard_negative_margin: float = 0.2
    best_metric: str = "rsum"  # any key of the val metrics; loss-like keys are minimised
    early_stopping_patience: int = 0  # epochs without improvement; 0 disables
    checkpoint_every: int = 0  # also keep epoch_<n>.pt every k epochs; 0 disables
    keep_checkpoints: int = 3  # how many epoch_<n>.pt to keep
    save_checkpoints: bool = True
    save_last: bool = True  # last.pt for resuming (HPO trials, which never resume, skip it)
    log_every: int = 10  # optimizer steps between TensorBoard scalar writes
    figure_images: int = 4  # val images in the per-epoch retrieval figure


@dataclass
class RunConfig:
    """Everything that defines one training run."""

    name: str = "default"
    seed: int = 0
    runs_dir: str = "runs"
    checkpoints_dir: str = "checkpoints"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, ModelConfig] = {
    # CPU-sized: seconds per epoch on Shapes, about 2M parameters.
    "tiny": ModelConfig(preset="tiny"),
    # GPU-sized: about 30M parameters.
    "small": ModelConfig(
        preset="small",
        embed_dim=256,
        image_size=128,
        patch_size=16,
        vision_width=384,
        vision_layers=8,
        vision_heads=6,
        text_width=384,
        text_layers=8,
        text_heads=6,
        context_length=64,
        vocab_size=16384,
    ),
    # The paper's ViT-B/32 (Radford et al. 2021).
    "vit-b-32": ModelConfig(
        preset="vit-b-32",
        embed_dim=512,
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        text_width=512,
        text_layers=12,
        text_heads=8,
        context_length=77,
        vocab_size=49408,
        activation="quick_gelu",
    ),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("auto", "shapes", "flickr30k", "folder"),
    "data.format": ("auto", "kaggle", "captions_txt", "tsv", "coco"),
    "model.activation": ("gelu", "quick_gelu"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
}


def model_preset(name: str) -> ModelConfig:
    """Return a fresh copy of the preset `name` (`tiny`, `small`, `vit-b-32`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name])


# --------------------------------------------------------------------------- typing


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


def _set_field(obj: Any, name: str, value: Any, key: str) -> None:
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


# --------------------------------------------------------------------------- dict I/O


def _section_from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    data = dict(data)
    if cls is ModelConfig and data.get("preset"):
        obj = model_preset(str(data.pop("preset")))
    else:
        obj = cls()
    for name, value in data.items():
        _set_field(obj, name, value, f"{prefix}.{name}")
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
            _set_field(config, name, value, name)
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


# --------------------------------------------------------------------------- overrides


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
    _set_field(target, parts[-1], value, key)


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


# --------------------------------------------------------------------------- validation


def validate(config: RunConfig) -> None:
    """Check value ranges and cross-field constraints; raise `ConfigError` on the first fault."""
    m, t, d = config.model, config.train, config.data

    def positive(key: str, value: float) -> None:
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{key} must be positive, got {value}")

    for name in (
        "embed_dim", "image_size", "patch_size", "vision_width", "vision_layers",
        "vision_heads", "text_width", "text_layers", "text_heads", "context_length",
        "vocab_size", "mlp_ratio", "init_temperature",
    ):
        positive(f"model.{name}", getattr(m, name))
    for tower in ("vision", "text"):
        width, heads = getattr(m, f"{tower}_width"), getattr(m, f"{tower}_heads")
        if width % heads:
            raise ConfigError(
                f"model.{tower}_heads={heads} must divide model.{tower}_width={width}"
            )
    if m.image_size % m.patch_size:
        raise ConfigError(
            f"model.patch_size={m.patch_size} must divide model.image_size={m.image_size}"
        )
    if m.context_length < 3:
        raise ConfigError("model.context_length must be at least 3 (start, a token, end)")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    for name in ("epochs", "batch_size", "eval_batch_size", "lr", "grad_accum_steps"):
        positive(f"train.{name}", getattr(t, name))
    if t.batch_size < 2:
        raise ConfigError("train.batch_size must be at least 2 (contrastive loss needs negatives)")
    if not 0 <= t.warmup_fraction < 1:
        raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
    if t.weight_decay < 0 or t.grad_clip < 0:
        raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
    for name, value in (("val_size", d.val_size), ("test_size", d.test_size)):
        if value is not None and value <= 0:
            raise ConfigError(f"data.{name} must be positive (images, or a fraction < 1)")
    for name in ("max_samples", "max_eval_samples"):
        value = getattr(d, name)
        if value is not None and value < 2:
            raise ConfigError(f"data.{name} must be at least 2, got {value}")
    if d.num_workers != "auto" and not (isinstance(d.num_workers, int) and d.num_workers >= 0):
        raise ConfigError(f"data.num_workers must be auto or an integer >= 0, got {d.num_workers!r}")
