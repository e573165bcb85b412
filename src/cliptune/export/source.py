"""Which checkpoint to export: a `.pt` file, a run's checkpoint folder, or a study.

A study's results folder (`optuna-results/<study>/`) records its best trial's
checkpoint in `best_results.json`; paths there are relative to the folder the study
ran in, which is the results folder's grandparent in the default layout.
"""

from __future__ import annotations

import json
from pathlib import Path

from cliptune.errors import CheckpointError

STUDY_RECORD = "best_results.json"


def study_checkpoint(results_dir: Path) -> Path:
    """The best trial's checkpoint of the study whose results are in `results_dir`."""
    record_path = results_dir / STUDY_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{record_path}: cannot read the study's record ({err})") from None
    recorded = record.get("checkpoint")
    retrain = (record.get("retrain") or {}).get("checkpoint")
    if not recorded:
        hint = f" (its retrained model is {retrain}: pass that file)" if retrain else ""
        raise CheckpointError(
            f"{record_path} names no best checkpoint: no trial completed with checkpoints "
            f"saved{hint}; pass --checkpoint PATH.pt"
        )
    path = Path(recorded)
    candidates = [path] if path.is_absolute() else [path, results_dir.parent.parent / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{record_path} names the checkpoint {recorded}, which is not there; run the export "
        "from the folder the study ran in, or pass --checkpoint PATH.pt"
    )


def resolve_checkpoint(path: str | Path) -> Path:
    """`path` itself if it is a file; `<folder>/best.pt` for a run's checkpoint folder; the
    best trial's checkpoint for a study's results folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / STUDY_RECORD).is_file():
            return study_checkpoint(path)
        if (path / "best.pt").is_file():
            return path / "best.pt"
        raise CheckpointError(
            f"{path} is a folder without best.pt or {STUDY_RECORD}; pass a .pt checkpoint, "
            "a run's checkpoint folder or a study's optuna-results/<study> folder"
        )
    raise CheckpointError(f"checkpoint not found: {path}")
