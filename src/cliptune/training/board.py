"""TensorBoard logging and figures of a run (rank 0 only).

The Trainer hands `RunBoard` the training scalars every `log_every` steps (`log_step`),
each epoch's metrics and validation embeddings (`log_epoch`), and the final HParams
summary (`close`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cliptune.data import Split
from cliptune.figures import figure_similarities, retrieval_figure, similarity_figure
from cliptune.tracking import RunLogger


class RunBoard:
    """Scalars, retrieval figures and the HParams row of one run folder."""

    def __init__(self, run_dir: Path, *, purge_step: int | None, figure_images: int):
        self.logger = RunLogger(run_dir, purge_step=purge_step)
        self.figure_images = figure_images

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Training scalars (`train/...`) at optimizer step `step`."""
        self.logger.scalars(scalars, step, prefix="train/")

    def log_epoch(self, epoch: int, metrics: dict[str, float],
                  val: tuple[Split, Tensor, Tensor] | None = None) -> None:
        """Validation and epoch scalars, and the retrieval figures of `val` (the validation
        split and its image and caption embeddings)."""
        self.logger.scalars({k[4:]: v for k, v in metrics.items() if k.startswith("val_")},
                            epoch, prefix="val/")
        self.logger.scalars(
            {"train_loss": metrics["train_loss"], "samples_per_s": metrics["samples_per_s"],
             "time": metrics["epoch_time"], "temperature": metrics["temperature"],
             **({"logit_bias": metrics["logit_bias"]} if "logit_bias" in metrics else {})},
            epoch, prefix="epoch/",
        )
        if self.figure_images > 0 and val is not None:
            split, image_emb, text_emb = val
            count = min(self.figure_images, len(split))
            shown = torch.linspace(0, len(split) - 1, count).long().tolist()
            first = torch.as_tensor(split.first_caption_index())
            rows, block = figure_similarities(image_emb, text_emb, shown, first)
            self.logger.figure(
                "val/retrieval",
                retrieval_figure(split.images, split.captions, split.caption_image, rows, shown),
                epoch,
            )
            self.logger.figure("val/similarity", similarity_figure(block), epoch)

    def close(self, hparams: dict[str, Any], final_metrics: dict[str, float], step: int) -> None:
        """Write the HParams summary with the run's final metrics, then close the file."""
        try:
            self.logger.write_hparams(hparams, final_metrics, step)
        finally:
            self.logger.close()
