"""Files shipped with cliptune: the default experiment YAMLs, and which one a command
uses when `--config` is not given (CPU-sized or sized for one CUDA GPU).

`experiments/` at the repository root holds them; `src/cliptune/experiments` is a
symlink to it, which the wheel build copies into the package (see pyproject.toml), so
the same `EXPERIMENTS_DIR` works in a checkout and in an installed package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cliptune.runtime import resolve_device

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"


def experiment_file(name: str) -> Path:
    """`experiments/<name>` (e.g. `default.yaml`, `hpo.yaml`, `search_space.yaml`)."""
    return EXPERIMENTS_DIR / name


# kind -> (CPU file, CUDA file); `train-shapes` is the CUDA choice when --data shapes.
_FILES = {
    "train": ("default.yaml", "gpu-flickr30k.yaml"),
    "train-shapes": ("default.yaml", "gpu-shapes.yaml"),
    "hpo": ("hpo.yaml", "gpu-hpo.yaml"),
    "search-space": ("search_space.yaml", "gpu-search-space.yaml"),
}


@dataclass(frozen=True)
class ExperimentChoice:
    """The experiment file a command runs and the one-line reason it was chosen."""

    path: Path
    reason: str

    def line(self) -> str:
        """The first line a run prints."""
        shown = self.path
        if shown.is_relative_to(Path.cwd()):
            shown = shown.relative_to(Path.cwd())
        return f"experiment: {shown} ({self.reason}; --config FILE chooses another)"


def default_experiment(kind: str, device: str | None = None, data: str | None = None) -> ExperimentChoice:
    """The shipped experiment of `kind` (`train`, `hpo`, `search-space`) for the hardware.

    `device` is the `--device` flag (None: auto) and `data` the `--data` flag: with a
    CUDA GPU, `--data shapes` trains the GPU Shapes experiment instead of Flickr30k.
    """
    if kind == "train" and data == "shapes":
        kind = "train-shapes"
    cpu_file, gpu_file = _FILES[kind]
    resolved = resolve_device(device or "auto")
    if resolved.type == "cuda":
        name = torch.cuda.get_device_name(resolved)
        return ExperimentChoice(EXPERIMENTS_DIR / gpu_file, f"CUDA GPU found: {name}")
    reason = "--device cpu" if device == "cpu" else "no CUDA GPU found"
    return ExperimentChoice(EXPERIMENTS_DIR / cpu_file, reason)
