"""TensorBoard logging for one run: scalars, figures and the HParams summary.

`SummaryWriter.add_hparams` opens a new sub-run per call (pytorch#32651), which splits
a run in two in TensorBoard's HParams view. `RunLogger.write_hparams` writes the
hparams summary into the run's own folder instead, so every run and every Optuna trial
is one row there with its scalars beside it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

HParamValue = int | float | str | bool


def _hparam_value(value: Any) -> HParamValue:
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _wait_past_existing_event_files(log_dir: Path) -> None:
    """Wait until a new event file's name sorts after the folder's existing ones.

    TensorBoard reads a run's event files in name order, and a name starts with the
    second the file was opened (then host, pid, counter). A resumed run opened in the
    second its killed predecessor's file was opened could sort first, and the purge it
    writes would then be read before the events it should drop.
    """
    stamps = [int(path.name.split(".")[3]) for path in log_dir.glob("events.out.tfevents.*")
              if path.name.split(".")[3].isdigit()]
    if stamps:
        time.sleep(max(0.0, max(stamps) + 1 - time.time()))


class RunLogger:
    """A TensorBoard writer bound to one run folder."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        self.log_dir = Path(log_dir)
        if purge_step is not None:
            _wait_past_existing_event_files(self.log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        """Write each value as `<prefix><key>` at `step`."""
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}{key}", value, step)

    def figure(self, tag: str, figure, step: int) -> None:
        """Write a matplotlib figure as an image (the figure is closed)."""
        self.writer.add_figure(tag, figure, step, close=True)

    def write_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """Record the run's hyperparameters with its final metrics in this run's folder.

        The metric values are also written as scalars: the HParams plugin reads them
        from the run's scalar summaries under the same tags.
        """
        clean = {key: _hparam_value(value) for key, value in hparams.items()}
        experiment, session_start, session_end = hparams_summary(clean, metrics)
        for summary in (experiment, session_start, session_end):
            self.writer.file_writer.add_summary(summary)
        self.scalars(metrics, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.flush()
        self.writer.close()
