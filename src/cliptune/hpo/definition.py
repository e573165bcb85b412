"""A study's definition: what it tunes, at what fidelity, under which limits, on which
data (`StudyDefinition`, made once per driver and read by every later stage), and how
this driver runs it (`StudySettings`).

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

The fingerprint, recorded when the study is created (user attribute `fingerprint`, and
the search space itself in `search_space_definition`), is what the trials are comparable
under: the metric, the search space, the target experiment (its seed included: the
trials' training seed), the fidelity, the limits and the data (the resolved source and
the data's fingerprint; a part missing on either side, as in a study from before it
existed or a driver that loads no data, is not compared). A driver that joins the study,
or retrains it, takes from there whatever its command line does not set
(`adopt_recorded`); only what the command line sets and that differs stops it, with a
message naming the key, unless the user allows it explicitly. The sampler seed is a
driver setting, not part of it. Machine-specific keys (device, folders, caches) are left
out, so drivers on different machines can share a study.

The data decision: the driver resolves the data source once (`auto` -> shapes or
flickr30k, see `cliptune.data.sources`) and prepares the data before any worker starts,
so the image cache is built once per machine and the workers only read it. A study that
recorded a decision keeps it: a joining driver whose config says `auto` takes the
recorded source instead of probing the network again. Worker processes get the resolved
source and stop, naming both, if what they load has another fingerprint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cliptune.config import (
    RunConfig,
    config_to_dict,
    load_config,
    model_preset,
    read_yaml,
    set_value,
    validate,
)
from cliptune.data import PreparedData
from cliptune.errors import ConfigError, DataError
from cliptune.hpo.search_space import SearchSpace, describe, search_space_from_dict
from cliptune.hpo.study import METRICS, Heartbeat
from cliptune.runtime import check_precision, resolve_device
from cliptune.trainer import Trainer

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


# The Trainer's callback key of each objective metric.
CALLBACK_KEYS = {"val_loss": "val_loss", "rsum": "val_rsum"}
DEFAULT_METRIC = "val_loss"


@dataclass
class StudyDefinition:
    """What a study is: the metric, the target experiment (with the command line's
    changes), the trials' fidelity, the search space and the limit on the target's
    training time; once decided, the data (`data_record`). Its `record()` is the study's
    fingerprint.

    It is validated when made: `trial_base`, the config every trial starts from (the
    target at the study's fidelity, the metric as the Trainer's objective), is the
    result, and its epochs are the study's one trial budget. Make a changed one with
    `dataclasses.replace`, which validates it again.
    """

    target: RunConfig
    fidelity: Fidelity
    space: SearchSpace
    metric: str = DEFAULT_METRIC
    max_train_seconds: float | None = None  # None: no limit
    target_path: str = ""
    data: dict | None = None  # the study's data decision (None: not made)
    trial_base: RunConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ConfigError(f"--metric {self.metric!r}: choose one of {', '.join(METRICS)}")
        try:
            base = self.fidelity.apply(self.target)
        except ConfigError as err:
            raise ConfigError(f"fidelity: {err}") from None
        base.train.best_metric = CALLBACK_KEYS[self.metric]
        if self.data is not None:  # the data decision: `auto` resolved
            base.data.source = self.data["source"]
        self.space.check_against(base)
        self.trial_base = base

    @property
    def budget(self) -> int:
        """Epochs per trial: the pruner's maximum resource."""
        return self.trial_base.train.epochs

    def record(self) -> dict[str, Any]:
        """The study's fingerprint (see the module docstring); the `data` part once the
        data decision is made."""
        fingerprint = study_fingerprint(self.metric, describe(self.space), self.target,
                                        self.fidelity.record(),
                                        {"max_train_seconds": self.max_train_seconds})
        return fingerprint if self.data is None else {**fingerprint, "data": self.data}

    def check_machine(self) -> None:
        """Raise `ConfigError` when this machine cannot train the trials (device, precision)."""
        check_precision(self.trial_base.train.precision,
                        resolve_device(self.trial_base.train.device))


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


def load_plan(path: str | Path, target: str | Path | None = None, *, space: SearchSpace,
              metric: str = DEFAULT_METRIC) -> StudyDefinition:
    """The definition a study file gives, with `space` and `metric`; `target` (the
    --config flag) replaces the file's target.

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
    try:
        return StudyDefinition(load_config(target_path), fidelity, space, metric, limit,
                               str(target_path))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# Keys that say where or on what a run happens, not what it learns.
MACHINE_KEYS = {
    "name", "runs_dir", "checkpoints_dir", "data.cache_dir", "data.data_dir",
    "data.num_workers", "data.download_timeout", "train.device", "train.compile",
    "train.log_every", "train.eval_batch_size",
}
PARTS = ("metric", "search_space", "target", "fidelity", "limits", "data")
SPACE_ATTR = "search_space_definition"  # study user attribute: space_to_dict(space)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def study_fingerprint(metric: str, search_space: list[str], target: RunConfig,
                      fidelity: dict[str, Any], limits: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """The fingerprint of a study (plain JSON-able dict), less its `data` part
    (`limits` None leaves that part out, as in a study from before it existed)."""
    flat = {k: v for k, v in _flatten(config_to_dict(target)).items() if k not in MACHINE_KEYS}
    fingerprint = {"metric": metric, "search_space": list(search_space), "target": flat,
                   "fidelity": _flatten(fidelity)}
    if limits is not None:
        fingerprint["limits"] = dict(limits)
    return fingerprint


def normalize(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded fingerprint in today's form: studies created before the sampler seed
    became a driver setting kept the target's seed as a separate `seed` part, and a
    config key added since the study was recorded had its default value (a new key's
    default keeps the behaviour from before it existed)."""
    if recorded is None:
        return recorded
    recorded = copy.deepcopy(recorded)
    if "seed" in recorded:
        recorded["target"]["seed"] = recorded.pop("seed")
    if "target" in recorded:
        defaults = RunConfig()
        if recorded["target"].get("model.preset"):
            defaults.model = model_preset(recorded["target"]["model.preset"])
        for key, value in _flatten(config_to_dict(defaults)).items():
            if key not in MACHINE_KEYS:
                recorded["target"].setdefault(key, value)
    return recorded


def _given(given: frozenset[str] | None, part: str, key: str | None = None) -> bool:
    """Whether the command line set `part` (a whole file) or `part.key` (a flag);
    `given` None: everything counts as set (callers of the Python API)."""
    return given is None or part in given or (key is not None and f"{part}.{key}" in given)


def adopt_recorded(definition: StudyDefinition, recorded: dict[str, Any] | None,
                   recorded_space: dict[str, Any] | None,
                   given: frozenset[str] | None) -> tuple[StudyDefinition, list[str]]:
    """The definition to run an existing study with: the study's recorded values
    wherever they differ from what the command line did not set (`given`: the parts and
    `part.key`s it set). Returns it with the adopted changes in words; what the command
    line set is kept, for `check_fingerprint` to refuse.
    """
    recorded = normalize(recorded)
    if recorded is None:
        return definition, []
    metric, space, limit = definition.metric, definition.space, definition.max_train_seconds
    target = copy.deepcopy(definition.target)
    adopted: list[str] = []
    if recorded.get("metric") not in (None, metric) and not _given(given, "metric"):
        adopted.append(f"metric {metric} -> {recorded['metric']}")
        metric = recorded["metric"]
    if (recorded.get("search_space") != describe(space) and recorded_space is not None
            and not _given(given, "search_space")):
        space = search_space_from_dict(recorded_space, "the study's recorded search space")
        adopted.append("its search space")
    current = study_fingerprint(metric, describe(space), target, definition.fidelity.record())
    for key, value in recorded.get("target", {}).items():
        if current["target"].get(key, value) != value and not _given(given, "target", key):
            adopted.append(f"target.{key} {current['target'][key]!r} -> {value!r}")
            set_value(target, key, value)
    flat = dict(current["fidelity"])
    for key in sorted(set(flat) | set(recorded.get("fidelity", {}))):
        value = recorded.get("fidelity", {}).get(key)
        if flat.get(key) != value and not _given(given, "fidelity", key):
            adopted.append(f"fidelity.{key} {flat.get(key)!r} -> {value!r}")
            flat[key] = value
    # a study from before the limits part had no limit
    recorded_limit = recorded.get("limits", {"max_train_seconds": None})
    if ("max_train_seconds" in recorded_limit and limit != recorded_limit["max_train_seconds"]
            and not _given(given, "limits", "max_train_seconds")):
        adopted.append(f"limits.max_train_seconds {limit!r} -> "
                       f"{recorded_limit['max_train_seconds']!r}")
        limit = recorded_limit["max_train_seconds"]
    if not adopted:
        return definition, []
    fidelity = Fidelity.from_flat({k: v for k, v in flat.items()
                                   if v is not None or not k.startswith("set.")})
    return replace(definition, target=target, fidelity=fidelity, space=space, metric=metric,
                   max_train_seconds=limit), adopted


def _changes(recorded: Any, current: Any) -> list[str]:
    if isinstance(recorded, dict) and isinstance(current, dict):
        keys = sorted(set(recorded) | set(current))
        return [f"{k}: {recorded.get(k, '(unset)')!r} -> {current.get(k, '(unset)')!r}"
                for k in keys if recorded.get(k) != current.get(k)]
    if isinstance(recorded, list) and isinstance(current, list):
        gone = [f"-{x}" for x in recorded if x not in current]
        new = [f"+{x}" for x in current if x not in recorded]
        return gone + new
    return [f"{recorded!r} -> {current!r}"] if recorded != current else []


def fingerprint_changes(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Human-readable differences, one line per changed part (empty: the same study)."""
    recorded = normalize(recorded)
    if recorded is None:
        return []
    lines = []
    for part in PARTS:
        if part not in recorded or part not in current:
            continue
        changes = _changes(recorded.get(part), current.get(part))
        if changes:
            shown = "; ".join(changes[:6]) + (f"; ... ({len(changes)} in all)"
                                              if len(changes) > 6 else "")
            lines.append(f"{part}: {shown}")
    return lines


def check_fingerprint(study_name: str, recorded: dict[str, Any] | None,
                      current: dict[str, Any], allow_changes: bool) -> list[str]:
    """Raise `ConfigError` naming what changed, unless `allow_changes`; returns the changes."""
    changes = fingerprint_changes(recorded, current)
    if changes and not allow_changes:
        raise ConfigError(
            f"study {study_name!r} was created with other settings than this command sets, "
            "so its trials would not be comparable (recorded -> this command):\n  "
            + "\n  ".join(changes)
            + "\nleave those flags out (the study's own settings are then used), start a new "
            "--study-name, or pass --allow-changes to continue anyway"
        )
    return changes


def data_record(data: PreparedData | None) -> dict | None:
    """`{"source", "fingerprint", "images"}` of prepared data (None: no data)."""
    if data is None:
        return None
    images = len(data.train) + len(data.val) + len(data.test)
    return {"source": data.source, "fingerprint": data.fingerprint, "images": images}


def prepare_trial_data(config: RunConfig, *, quiet: bool = True) -> PreparedData:
    """The data a trial of `config` trains on (image cache built or reused, tokenizer)."""
    return Trainer(config, show_progress=not quiet, resume=None).prepare_data()


def decide_data(definition: StudyDefinition, recorded: dict | None, *,
                quiet: bool) -> tuple[StudyDefinition, PreparedData, str | None]:
    """Make the data decision of `definition`, the study whose fingerprint is `recorded`,
    and prepare the trials' data.

    `data.source` `auto` becomes the recorded source when the study has one (the note
    says so), else what `auto` resolves to now. Returns the definition with its data
    decision (its trial base holds the resolved source, which is what the workers get),
    the data and the note."""
    config = copy.deepcopy(definition.trial_base)
    decided = (recorded or {}).get("data")
    note = None
    if decided and config.data.source == "auto":
        config.data.source = decided["source"]
        note = (f"data: {decided['source']}, as the study decided when its data was first "
                "recorded (`auto` is not resolved again)")
    data = prepare_trial_data(config, quiet=quiet)
    return replace(definition, data=data_record(data)), data, note


def check_same_data(data: PreparedData, expected: dict | None, who: str) -> None:
    """Raise `DataError` naming both when `data` is not the data the study decided on."""
    seen = data_record(data)
    if expected is None or seen["fingerprint"] == expected["fingerprint"]:
        return
    raise DataError(
        f"{who} loaded other data than the study's driver decided on: it sees "
        f"{seen['source']} (fingerprint {seen['fingerprint']}, {seen['images']} images), the "
        f"study uses {expected['source']} (fingerprint {expected['fingerprint']}, "
        f"{expected.get('images', '?')} images). The dataset changed while the study ran "
        "(files added, removed or edited, another download): restore it, or start a new "
        "--study-name for the new data"
    )


PLOT_INTERVAL_S = 60.0  # at most one plot rewrite per minute while the study runs


@dataclass
class StudySettings:
    """How this driver runs a study (what the study is: its `StudyDefinition`)."""

    study_name: str = "clip-hpo"
    trials: int = 50  # trials this driver adds to the study
    max_trials: int | None = None  # total over all drivers (complete + pruned + running)
    storage: str | None = None  # None: optuna-results/<study>/study.journal
    artifact_store: str | None = None  # None: optuna-results/<study>/artifacts
    workers: int = 1
    timeout: float | None = None  # seconds, per driver
    sampler: str = "tpe"
    pruner: str = "auto"  # Hyperband, first rung from a recorded fidelity check (`design`)
    patience: int | None = None
    min_epochs: int = 1  # the pruner's first rung (Hyperband / SHA minimum resource)
    warm_start: tuple[str, ...] = ()  # earlier studies whose best trials run first
    warm_start_top: int = 1  # best trials taken from each of them
    results_dir: str = "optuna-results"
    allow_changes: bool = False  # continue a study whose fingerprint differs
    retrain_best: bool = False
    seeds: int = 3  # --retrain-best: seeds per configuration
    show_progress: bool = True
    plot_interval_s: float = PLOT_INTERVAL_S
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    seed: int | None = None  # this driver's sampler seed (None: the target's seed)
    # What the command line set of the study's definition: "metric", "search_space",
    # "target" / "fidelity" (a whole file) or "target.<key>" / "fidelity.<key>" (a flag).
    # A driver joining a study takes the rest from the study; None: everything is set.
    given: frozenset[str] | None = None

    def check(self) -> None:
        """Raise `ConfigError` naming the flag for an impossible value."""
        if self.trials < 0:
            raise ConfigError(f"--trials must be >= 0, got {self.trials}")
        if self.max_trials is not None and self.max_trials < 1:
            raise ConfigError(f"--max-trials must be at least 1, got {self.max_trials}")
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"--timeout must be positive seconds, got {self.timeout}")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if self.warm_start_top < 1:
            raise ConfigError(f"--warm-start-top must be at least 1, got {self.warm_start_top}")


def driver_seed(settings: StudySettings, definition: StudyDefinition) -> int:
    """This driver's sampler seed: --seed, else the target's seed."""
    return definition.target.seed if settings.seed is None else settings.seed
