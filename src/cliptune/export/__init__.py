"""Export a checkpoint for the tools people load CLIPs with: Hugging Face transformers
(`hf`) and OpenCLIP (`open_clip`).

`export_checkpoint` writes a folder with the weights (safetensors), the model and
preprocessing configs, the tokenizer, a README.md and `cliptune_config.yaml`. The
folder is built under a temporary name and renamed into place, so an interrupted
export never leaves a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cliptune.checkpoint import LoadedModel, load_model
from cliptune.config import dump_config
from cliptune.errors import CliptuneError
from cliptune.export.hf import write_hf
from cliptune.export.open_clip import write_open_clip
from cliptune.export.readme import readme_text
from cliptune.export.source import resolve_checkpoint

FORMATS: dict[str, Callable[[LoadedModel, Path], list[str]]] = {
    "hf": write_hf,
    "open_clip": write_open_clip,
}
MARKER = "cliptune_export.json"  # what makes a folder safe to replace with --force


@dataclass
class ExportResult:
    """Where an export went and what it holds."""

    out_dir: Path
    format: str
    checkpoint: Path  # the .pt file that was exported
    files: list[str]


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CliptuneError(f"--out {out_dir} is a file; choose a folder")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise CliptuneError(f"--out {out_dir} is not empty; pass --force to replace an earlier "
                            "export there, or choose another folder")
    if not (out_dir / MARKER).is_file():
        raise CliptuneError(f"--out {out_dir} holds files that are not a cliptune export; "
                            "--force only replaces earlier exports: choose another folder")


def _readable_files(folder: Path) -> None:
    """Give every file in `folder` the mode a plain `open()` would (0666 less the umask):
    safetensors writes its files 0600, unlike the JSON and text files next to them."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def export_checkpoint(
    checkpoint: str | Path, fmt: str, out_dir: str | Path, *, overwrite: bool = False
) -> ExportResult:
    """Export `checkpoint` (a .pt file, a run's checkpoint folder or a study's results
    folder) in format `fmt` (`hf` or `open_clip`) to the folder `out_dir`.

    An existing non-empty `out_dir` is replaced only with `overwrite` and only when it
    holds an earlier export. Raises `CliptuneError` (`CheckpointError` for a missing,
    corrupt or non-cliptune checkpoint) with a message naming the file and the fix.
    """
    if fmt not in FORMATS:
        raise CliptuneError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    source = resolve_checkpoint(checkpoint)
    loaded = load_model(source, "cpu")
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        files = FORMATS[fmt](loaded, partial)
        (partial / "README.md").write_text(readme_text(loaded, source, fmt, str(out_dir)),
                                           encoding="utf-8")
        (partial / "cliptune_config.yaml").write_text(dump_config(loaded.config), encoding="utf-8")
        marker = {"format": fmt, "checkpoint": str(source), "epoch": loaded.checkpoint.get("epoch")}
        (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _readable_files(partial)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    files = [*files, "README.md", "cliptune_config.yaml", MARKER]
    return ExportResult(out_dir=out_dir, format=fmt, checkpoint=source, files=files)


__all__ = ["FORMATS", "ExportResult", "export_checkpoint"]
