"""A study's fingerprint: what its trials are comparable under.

Recorded when the study is created (user attribute `fingerprint`); continuing the
study with a different search space, target experiment, fidelity, seed, metric or data
(the `data` part: the resolved source and the data's fingerprint, see `study_data`)
stops with a message naming what changed, unless the user allows it explicitly. A part
missing on either side (a study from before that part existed; a driver that runs no
trials and so loads no data) is not compared.
Machine-specific keys (device, folders, caches) are left out, so drivers on
different machines can share a study.
"""

from __future__ import annotations

from typing import Any

from cliptune.config import RunConfig, config_to_dict
from cliptune.errors import ConfigError

# Keys that say where or on what a run happens, not what it learns.
MACHINE_KEYS = {
    "name", "runs_dir", "checkpoints_dir", "data.cache_dir", "data.data_dir",
    "data.num_workers", "data.download_timeout", "train.device", "train.compile",
    "train.log_every", "train.eval_batch_size",
}
PARTS = ("metric", "search_space", "target", "fidelity", "seed", "data")


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
                      fidelity: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of a study (plain JSON-able dict), less its `data` part."""
    flat = {k: v for k, v in _flatten(config_to_dict(target)).items() if k not in MACHINE_KEYS}
    flat.pop("seed", None)
    return {"metric": metric, "search_space": list(search_space), "target": flat,
            "fidelity": _flatten(fidelity), "seed": target.seed}


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
            f"study {study_name!r} was created with other settings, so its trials would "
            "not be comparable:\n  " + "\n  ".join(changes)
            + "\nrun it with the settings it was created with, start a new --study-name, "
            "or pass --allow-changes to continue anyway"
        )
    return changes
