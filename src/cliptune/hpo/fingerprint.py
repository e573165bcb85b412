"""A study's fingerprint: what its trials are comparable under.

Recorded when the study is created (user attribute `fingerprint`, and the search
space itself in `search_space_definition`): the metric, the search space, the target
experiment (its seed included: the trials' training seed), the fidelity, the limits
(`max_train_seconds`, the target's training time limit) and the data
(the `data` part: the resolved source and the data's fingerprint, see `study_data`; a
part missing on either side, as in a study from before it existed or a driver that
loads no data, is not compared). A driver
that joins the study, or retrains it, takes from there whatever its command line does
not set (`adopt_recorded`); only what the command line sets and that differs stops it,
with a message naming the key, unless the user allows it explicitly. The sampler seed
is a driver setting, not part of it. Machine-specific keys (device, folders, caches)
are left out, so drivers on different machines can share a study.
"""

from __future__ import annotations

import copy
from typing import Any

from cliptune.config import RunConfig, config_to_dict, set_value
from cliptune.errors import ConfigError
from cliptune.hpo.fidelity import Fidelity, StudyPlan
from cliptune.hpo.search_space import SearchSpace, describe
from cliptune.hpo.search_space_file import search_space_from_dict

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
    (`limits`: `StudyPlan.limits()`; None leaves the part out)."""
    flat = {k: v for k, v in _flatten(config_to_dict(target)).items() if k not in MACHINE_KEYS}
    fingerprint = {"metric": metric, "search_space": list(search_space), "target": flat,
                   "fidelity": _flatten(fidelity)}
    if limits is not None:
        fingerprint["limits"] = dict(limits)
    return fingerprint


def normalize(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded fingerprint in today's form: studies created before the sampler seed
    became a driver setting kept the target's seed as a separate `seed` part, and a
    target key added since the study was created counts as its default (a new key's
    default is the behaviour from before it)."""
    if recorded is None:
        return recorded
    recorded = copy.deepcopy(recorded)
    if "seed" in recorded:
        recorded["target"]["seed"] = recorded.pop("seed")
    if "target" in recorded:
        defaults = study_fingerprint("", [], RunConfig(), {})["target"]
        recorded["target"] = {**defaults, **recorded["target"]}
    return recorded


def _given(given: frozenset[str] | None, part: str, key: str | None = None) -> bool:
    """Whether the command line set `part` (a whole file) or `part.key` (a flag);
    `given` None: everything counts as set (callers of the Python API)."""
    return given is None or part in given or (key is not None and f"{part}.{key}" in given)


def adopt_recorded(recorded: dict[str, Any] | None, recorded_space: dict[str, Any] | None,
                   plan: StudyPlan, space: SearchSpace, metric: str,
                   given: frozenset[str] | None) -> tuple[StudyPlan, SearchSpace, str, list[str]]:
    """The plan, space and metric to run an existing study with: the study's recorded
    values wherever they differ from what the command line did not set (`given`: the
    parts and `part.key`s it set). Returns them with the adopted changes in words;
    what the command line set is kept, for `check_fingerprint` to refuse.
    """
    recorded = normalize(recorded)
    if recorded is None:
        return plan, space, metric, []
    plan = copy.deepcopy(plan)
    adopted: list[str] = []
    if recorded.get("metric") not in (None, metric) and not _given(given, "metric"):
        adopted.append(f"metric {metric} -> {recorded['metric']}")
        metric = recorded["metric"]
    if (recorded.get("search_space") != describe(space) and recorded_space is not None
            and not _given(given, "search_space")):
        space = search_space_from_dict(recorded_space, "the study's recorded search space")
        adopted.append("its search space")
    current = study_fingerprint(metric, describe(space), plan.target, plan.fidelity.record())
    for key, value in recorded.get("target", {}).items():
        if current["target"].get(key, value) != value and not _given(given, "target", key):
            adopted.append(f"target.{key} {current['target'][key]!r} -> {value!r}")
            set_value(plan.target, key, value)
    flat = dict(current["fidelity"])
    for key in sorted(set(flat) | set(recorded.get("fidelity", {}))):
        value = recorded.get("fidelity", {}).get(key)
        if flat.get(key) != value and not _given(given, "fidelity", key):
            adopted.append(f"fidelity.{key} {flat.get(key)!r} -> {value!r}")
            flat[key] = value
    plan.fidelity = Fidelity.from_flat({k: v for k, v in flat.items() if v is not None
                                        or not k.startswith("set.")})
    # a study from before the limits part had no limit
    for key, value in recorded.get("limits", {"max_train_seconds": None}).items():
        if key == "max_train_seconds" and plan.max_train_seconds != value and not _given(
                given, "limits", key):
            adopted.append(f"limits.{key} {plan.max_train_seconds!r} -> {value!r}")
            plan.max_train_seconds = value
    plan.trial_base()  # the adopted definition is valid (errors name the key)
    return plan, space, metric, adopted


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
