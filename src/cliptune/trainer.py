"""The Trainer: data -> model -> fit / evaluate / checkpoint / resume, on one process or many.

Its steps can be called one by one (`prepare_data`, `build_model`, `fit`, `evaluate`,
`evaluate_best`) or all at once through `fit`. The pieces live in `cliptune.training`:
the train state, which alone advances steps and epochs (`state.py`), one training epoch
(`loop.py`), TensorBoard logging and figures (`board.py`), what a run prints
(`summary.py`); checkpoints and resume rules are `cliptune.checkpoint`'s, and a split is
evaluated by `cliptune.evaluation`. Under torchrun (see `cliptune.distributed`) the
model is wrapped in DistributedDataParallel, each rank trains its slice of every global
batch and embeds its share of the validation split, rank 0 scores it, prints and
writes files. The Optuna driver uses only the public methods and the per-epoch callbacks.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from cliptune import distributed
from cliptune.checkpoint import (
    Checkpointer,
    check_schedule,
    load_checkpoint,
    run_checkpoint,
    saved_schedule,
    start_run,
    weights_checkpoint,
)
from cliptune.config import RunConfig, model_config_for
from cliptune.data import EpochLoader, PreparedData, Split, device_batches, prepare_data
from cliptune.data.sources import check_paths
from cliptune.errors import ConfigError, DataError
from cliptune.evaluation import evaluate_split
from cliptune.loss import ClipLoss, SigLipLoss
from cliptune.model import CLIP
from cliptune.runtime import (
    configure_matmul,
    process_device,
    resolve_precision,
    seed_everything,
    visible_gpus,
)
from cliptune.tokenizer import Tokenizer
from cliptune.training.board import RunBoard
from cliptune.training.loop import train_one_epoch
from cliptune.training.state import TrainState, metric_is_minimised
from cliptune.training.summary import FitResult, epoch_line, final_metrics, fit_summary, hparams

__all__ = ["EpochCallback", "FitResult", "Trainer", "metric_is_minimised"]

EpochCallback = Callable[["Trainer", int, dict[str, float]], None]


class Trainer:
    """Trains one CLIP from a `RunConfig`."""

    def __init__(
        self,
        config: RunConfig,
        *,
        data: PreparedData | None = None,
        callbacks: Sequence[EpochCallback] = (),
        show_progress: bool = True,
        resume: str | None = "auto",
        hparams_extra: dict[str, Any] | None = None,
    ):
        self.config = copy.deepcopy(config)
        self.data = data
        self.callbacks = list(callbacks)
        self.show_progress = show_progress
        self.resume = resume
        self.hparams_extra = dict(hparams_extra or {})
        self.dist = distributed.current()
        self.device = process_device(self.config.train.device, world_size=self.dist.world_size,
                                     local_rank=self.dist.local_rank, cuda_count=visible_gpus())
        self.precision = resolve_precision(self.config.train.precision, self.device)
        configure_matmul(self.device)
        name = self.config.train.best_metric
        self.best_metric = name if name.startswith("val_") else f"val_{name}"
        self.state: TrainState | None = None  # holds the one model
        self.train_model: torch.nn.Module | None = None  # DDP and/or compiled view of `model`
        self.loss_fn: ClipLoss | SigLipLoss | None = None
        self._resume_state: dict | None = None
        self._batch_size = self.config.train.batch_size
        self._loader: EpochLoader | None = None

    # ------------------------------------------------------------------ views

    @property
    def run_dir(self) -> Path:
        """TensorBoard folder of this run: `<runs_dir>/<name>`."""
        return Path(self.config.runs_dir) / self.config.name

    @property
    def checkpoint_dir(self) -> Path:
        """Checkpoint folder of this run: `<checkpoints_dir>/<name>`."""
        return Path(self.config.checkpoints_dir) / self.config.name

    @property
    def model(self) -> CLIP | None:
        """The model (`state.model`; None before `build_model`)."""
        return self.state.model if self.state else None

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.state.epoch if self.state else 0

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        return self.state.step if self.state else 0

    @property
    def history(self) -> list[dict[str, float]]:
        """Metrics of every completed epoch."""
        return self.state.history if self.state else []

    @property
    def best(self) -> dict[str, float]:
        """`{"value", "epoch"}` of the best epoch so far (empty before the first)."""
        return self.state.best if self.state else {}

    def _print(self, message: str) -> None:
        if self.show_progress and self.dist.is_main:
            tqdm.write(message)

    # ------------------------------------------------------------------ setup

    def prepare_data(self) -> PreparedData:
        """Load (or reuse) the dataset, its splits, image cache and tokenizer.

        Under torchrun rank 0 decides: it resolves `data.source` (`auto` probes the
        network once, on rank 0 only), downloads and builds the image cache while the
        other ranks wait; they then prepare the source rank 0 used, reading its cache.
        Every rank then checks that all ranks see the same data (`PreparedData.fingerprint`)
        and stops with a `DataError` naming the ranks that differ."""
        if self.data is None and self.dist.is_main:
            self._load_data()
        source = distributed.broadcast_object(self.data.source if self.dist.is_main else None)
        if self.data is None:
            self.config.data.source = source
            self._load_data()
        self._check_ranks_agree()
        if self.data.image_size != self.config.model.image_size:
            raise ConfigError(
                f"the prepared data has {self.data.image_size}px images but "
                f"model.image_size={self.config.model.image_size}"
            )
        self.config.data.source = self.data.source
        return self.data

    def _load_data(self) -> None:
        tokenizer = None
        if self._resume_state is not None:
            tokenizer = Tokenizer.from_json(self._resume_state["tokenizer"])
        cfg = self.config
        self.data = prepare_data(
            cfg.data, image_size=cfg.model.image_size, vocab_size=cfg.model.vocab_size,
            context_length=cfg.model.context_length, tokenizer=tokenizer,
            quiet=not (self.show_progress and self.dist.is_main),
        )

    def _check_ranks_agree(self) -> None:
        """Raise `DataError` on every rank when the ranks prepared different data."""
        seen = distributed.all_gather_object((self.data.source, self.data.fingerprint))
        if len(set(seen)) <= 1:
            return
        ranks = ", ".join(f"rank {rank}: {source} (fingerprint {fingerprint})"
                          for rank, (source, fingerprint) in enumerate(seen))
        raise DataError(
            f"the {len(seen)} ranks prepared different data ({ranks}). Every rank must read "
            "the same dataset: give every node the same files (--data-dir, the KaggleHub "
            "cache) and the same data.* settings, then run again"
        )

    def build_model(self) -> CLIP:
        """Create the model, loss and train state (optimizer, schedule, fp16 grad scaler);
        under torchrun also the DistributedDataParallel wrapper."""
        cfg = self.config
        if self.data is None:
            self.prepare_data()
        seed_everything(cfg.seed)
        model = CLIP(model_config_for(cfg)).to(self.device)
        if cfg.train.loss == "siglip":
            self.loss_fn = SigLipLoss()
        else:
            self.loss_fn = ClipLoss(
                hard_negative_weight=cfg.train.hard_negative_weight,
                hard_negative_k=cfg.train.hard_negative_k,
                hard_negative_margin=cfg.train.hard_negative_margin,
            )
        self._batch_size = distributed.global_batch_size(cfg.train.batch_size, len(self.data.train))
        if self._batch_size < cfg.train.batch_size:
            self._print(f"notice: the train split has {len(self.data.train)} images, fewer than "
                        f"train.batch_size={cfg.train.batch_size}; using batches of "
                        f"{self._batch_size}")
        self._loader = self._train_loader(epoch=1)
        steps_per_epoch = math.ceil(len(self._loader) / cfg.train.grad_accum_steps)
        total, epochs = steps_per_epoch * cfg.train.epochs, cfg.train.epochs
        if self._resume_state is not None:  # the schedule the run started with, never a new one
            total, epochs = saved_schedule(self._resume_state, steps_per_epoch)
            check_schedule(cfg.name, cfg.train.epochs, epochs, total)
        self.state = TrainState.create(model, cfg.train, precision=self.precision,
                                       total_steps=total, schedule_epochs=epochs)
        wrapped: torch.nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        self.train_model = torch.compile(wrapped) if cfg.train.compile else wrapped
        return model

    def _train_loader(self, epoch: int, position: dict | None = None) -> EpochLoader:
        return self.data.train_loader(
            self.config, epoch=epoch, batch_size=self._batch_size, device=self.device,
            rank=self.dist.rank, world_size=self.dist.world_size, position=position,
            loader=self._loader)

    def _position_saver(self, checkpointer: Checkpointer, loader: EpochLoader, epoch: int):
        """`on_step` for train_one_epoch: last.pt with the epoch's position every
        `train.checkpoint_every_steps` optimizer steps (every rank joins the collectives)."""
        def save(position: dict[str, float]) -> None:
            batches_done = int(position["batches"])
            shards = loader.position(batches_done)
            self.state.position = {
                "epoch": epoch, **position,
                "shards": distributed.all_gather_object(shards) if shards is not None else None,
            }
            if checkpointer.writer:
                metrics = {"epoch": float(epoch - 1), "step": float(self.state.step)}
                checkpointer.save_position(self.checkpoint_state(metrics))

        return save if self.config.train.checkpoint_every_steps else None

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Retrieval metrics and loss of the current weights on `split` (no key prefix)."""
        if self.model is None:
            self.build_model()
        return evaluate_split(self.model, self.data.split(split),
                              batch_size=self.config.train.eval_batch_size, device=self.device,
                              precision=self.precision)

    def _validate(self) -> tuple[dict[str, float], tuple[Split, torch.Tensor, torch.Tensor]]:
        """Every rank embeds its share of the validation split, rank 0 scores it, and every
        rank gets the metrics; also returns the split and its embeddings (for figures)."""
        split = self.data.split("val")
        metrics, image_emb, text_emb = evaluate_split(
            self.model, split, batch_size=self.config.train.eval_batch_size, device=self.device,
            precision=self.precision, sharded=True, return_embeddings=True)
        return metrics, (split, image_emb, text_emb)

    def evaluate_best(self, splits: Sequence[str] = ("val", "test")) -> dict[str, dict[str, float]]:
        """Evaluate the best checkpoint (or the current weights) and write `metrics.json`
        (rank 0). `evaluate.py` on best.pt and the same split prints the same numbers."""
        if self.model is None:
            self.build_model()
        best_path = self.checkpoint_dir / "best.pt"
        source = "current weights"
        if best_path.is_file():
            self.model.load_state_dict(load_checkpoint(best_path)["model"])
            source = str(best_path)
        results: dict[str, Any] = {split: self.evaluate(split) for split in splits}
        self._checkpointer().write_metrics({"weights": source, "precision": self.precision,
                                            "best_epoch": int(self.best.get("epoch", 0)),
                                            **results})
        return results

    # ------------------------------------------------------------------ fit

    def hparams(self) -> dict[str, Any]:
        """The run's hyperparameters as flat `section.key` values for TensorBoard
        (`train.precision` as resolved on this device, not `auto`)."""
        return {**hparams(self.config, self.hparams_extra), "train.precision": self.precision}

    def fit(self) -> FitResult:
        """Train for `train.epochs` epochs (resuming if asked), validating after each epoch."""
        start = time.perf_counter()
        if self.dist.enabled:
            self._print(distributed.job_line(self.device))
        if self.data is None:
            check_paths(self.config.data)
        resume_path, self._resume_state = start_run(self.config, self.resume, say=self._print)
        self.prepare_data()
        self.build_model()
        if self.dist.enabled:
            self._print(self._batch_line())
        if resume_path is not None:
            note = self.state.load_state_dict(self._resume_state)
            self._resume_state = None
            where = f"after epoch {self.epoch}"
            position = self.state.position or {}
            if position.get("epoch") == self.epoch + 1:
                where = (f"in epoch {self.epoch + 1} after batch {int(position['batches'])} "
                         f"of {len(self._loader)}")
            self._print(f"resuming {resume_path} {where} (step {self.step})")
            if note:
                self._print(f"note: {note}")
        board = None
        if self.dist.is_main:  # purge_step drops what a killed run logged after its checkpoint
            board = RunBoard(self.run_dir, figure_images=self.config.train.figure_images,
                             purge_step=self.step if resume_path else None)
        try:
            stopped_early = self._fit_epochs(self._checkpointer(), board)
        finally:
            self._loader.close()
            if board is not None:
                board.close(self.hparams(), final_metrics(self.history), len(self.history))
        result = FitResult.of(self.state, self.best_metric, stopped_early=stopped_early,
                              wall_time=time.perf_counter() - start)
        self._print(fit_summary(result, self.config, self.checkpoint_dir, self.run_dir))
        return result

    def _batch_line(self) -> str:
        world, accum = self.dist.world_size, self.config.train.grad_accum_steps
        line = (f"batch: {self._batch_size} global = {self._batch_size // world} per rank x "
                f"{world} ranks")
        if accum > 1:
            negatives = ("one contrastive batch" if self.config.train.accum_features
                         else f"negatives from each batch of {self._batch_size}")
            line += (f", {accum} accumulated per optimizer step "
                     f"({self._batch_size * accum} samples, {negatives})")
        return line

    def _checkpointer(self) -> Checkpointer:
        return Checkpointer(self.checkpoint_dir, self.config.train, writer=self.dist.is_main)

    def _fit_epochs(self, checkpointer: Checkpointer, board: RunBoard | None) -> bool:
        cfg, state = self.config.train, self.state
        since_best = state.epoch - int(state.best["epoch"]) if state.best else 0
        while state.epoch < cfg.epochs:
            epoch, epoch_start = state.epoch + 1, time.perf_counter()
            position = state.position if (state.position or {}).get("epoch") == epoch else None
            loader = self._loader = self._train_loader(epoch, position)
            self.model.set_patch_dropout(cfg.masks_patches(epoch))
            stats = train_one_epoch(
                state, self.train_model, self.loss_fn, device_batches(loader, self.device),
                len(loader), config=cfg, device=self.device, precision=self.precision,
                seed=self.config.seed, log=board.log_step if board is not None else None,
                progress=self.show_progress and self.dist.is_main,
                checkpoint_hint=str(checkpointer.last), position=position,
                on_step=self._position_saver(checkpointer, loader, epoch),
            )
            train_time = time.perf_counter() - epoch_start
            skipped = self._skipped(loader, epoch)
            val, val_embeddings = self._validate()
            metrics = {
                "epoch": float(epoch), "train_loss": stats.loss, **skipped,
                **{f"val_{key}": value for key, value in val.items()},
                "lr": state.scheduler.get_last_lr()[0],
                "temperature": float(1 / self.model.logit_scale.detach().exp()),
                **({} if self.model.logit_bias is None  # SigLIP's learned bias
                   else {"logit_bias": self.model.logit_bias.item()}),
                "epoch_time": time.perf_counter() - epoch_start,
                "train_time": train_time,  # the training part of epoch_time (no validation)
                "samples_per_s": stats.samples_per_s,
            }
            improved = state.end_epoch(metrics, self.best_metric)
            since_best = 0 if improved else since_best + 1
            if checkpointer.writer:
                checkpointer.save_epoch(self.checkpoint_state(metrics), epoch, improved)
            self._print(epoch_line(metrics, cfg.epochs))
            if board is not None:
                board.log_epoch(epoch, metrics, val_embeddings)
            for callback in self.callbacks:
                callback(self, epoch, metrics)
            if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
                self._print(f"early stopping: {self.best_metric} has not improved for "
                            f"{since_best} epochs")
                return True
        return False

    def _skipped(self, loader: EpochLoader, epoch: int) -> dict[str, float]:
        """Broken training samples the loader (a shard stream) passed over this epoch (all
        ranks), as `train_skipped` for the metrics, with a line when there were any."""
        skipped = loader.skipped()
        if skipped is None:
            return {}
        counts = torch.tensor(skipped, dtype=torch.float64, device=self.device)
        image, caption = (distributed.all_reduce_mean(counts) * self.dist.world_size).cpu().tolist()
        if image or caption:
            self._print(f"epoch {epoch}: skipped {int(image + caption)} broken training "
                        f"samples ({int(image)} without a readable image, {int(caption)} "
                        "without a caption)")
        return {"train_skipped": image + caption}

    def checkpoint_state(self, metrics: dict[str, float], *,
                         weights: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """The run checkpoint of the epoch `metrics` belong to (`run_checkpoint`: a run
        resumes from it), or with `weights` (a model state dict, e.g. the best epoch's kept
        on the CPU) the weights-only checkpoint of those weights (`weights_checkpoint`)."""
        if weights is None:
            return run_checkpoint(self.config, self.data.tokenizer, metrics,
                                  self.state.state_dict())
        return weights_checkpoint(self.config, self.data.tokenizer, metrics, weights,
                                  best=self.state.best, history=self.state.history)
