"""Files shipped with cliptune: the default experiment YAMLs.

`experiments/` at the repository root holds them; `src/cliptune/experiments` is a
symlink to it, which the wheel build copies into the package (see pyproject.toml), so
the same `EXPERIMENTS_DIR` works in a checkout and in an installed package.
"""

from __future__ import annotations

from pathlib import Path

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"


def experiment_file(name: str) -> Path:
    """`experiments/<name>` (e.g. `default.yaml`, `hpo.yaml`, `search_space.yaml`)."""
    return EXPERIMENTS_DIR / name
