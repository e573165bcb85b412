"""Keep only the best trial's checkpoint: `checkpoints/<study>/best.pt`.

Trials checkpoint into a scratch folder. When a trial finishes, the driver (one
process per machine, so no two promotions race) moves its best.pt to the study's
folder if its value beats the one recorded in `best.json` next to it, and deletes
the scratch folder either way. `os.replace` makes each file appear whole or not at
all, so a crash never leaves a half-written best.pt.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState


def study_checkpoint_dir(checkpoints_dir: str | Path, study_name: str) -> Path:
    """`<checkpoints_dir>/<study>/`, holding best.pt and best.json."""
    return Path(checkpoints_dir) / study_name


def recorded_best(folder: Path) -> dict | None:
    """The `{trial, value}` record of the checkpoint kept in `folder`, if any."""
    path = folder / "best.json"
    if not path.is_file() or not (folder / "best.pt").is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _beats(value: float, record: dict | None, minimize: bool) -> bool:
    if record is None:
        return True
    return value < record["value"] if minimize else value > record["value"]


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def settle_trial_checkpoint(trial: FrozenTrial, folder: Path, minimize: bool) -> bool:
    """Promote `trial`'s checkpoint to `folder/best.pt` if it is the best so far.

    Always removes the trial's scratch checkpoint folder. Returns True if promoted.
    """
    source = trial.user_attrs.get("checkpoint")
    if source is None:
        return False
    source = Path(source)
    promoted = False
    if (
        trial.state == TrialState.COMPLETE
        and source.is_file()
        and _beats(trial.value, recorded_best(folder), minimize)
    ):
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(source, folder / "best.pt")
        _write_json_atomic(folder / "best.json", {"trial": trial.number, "value": trial.value})
        promoted = True
    shutil.rmtree(source.parent, ignore_errors=True)
    return promoted
