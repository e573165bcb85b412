"""The Trainer: data -> model -> fit / evaluate / checkpoint / resume.

Its steps can be called one by one (`prepare_data`, `build_model`, `fit`, `evaluate`,
`evaluate_best`) or all at once through `fit`. The Optuna driver uses only these
public methods and the per-epoch callbacks.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cliptune.checkpoint import load_checkpoint, save_checkpoint
from cliptune.config import RunConfig, config_to_dict
from cliptune.data import PreparedData, TrainLoader, device_batches, prepare_data
from cliptune.errors import CheckpointError, ConfigError, TrainingDiverged
from cliptune.evaluation import embed_split, split_loss
from cliptune.figures import retrieval_figure, similarity_figure
from cliptune.loss import ClipLoss
from cliptune.metrics import retrieval_metrics
from cliptune.model import CLIP
from cliptune.optim import build_optimizer, build_scheduler
from cliptune.runtime import autocast, check_precision, resolve_device, seed_everything
from cliptune.tokenizer import Tokenizer
from cliptune.tracking import RunLogger

EpochCallback = Callable[["Trainer", int, dict[str, float]], None]

# Config keys that may change between a run and its resumption without changing its result.
RESUME_FREE_KEYS = {
    ("train", "device"), ("train", "compile"), ("train", "epochs"), ("train", "log_every"),
    ("train", "save_checkpoints"), ("train", "checkpoint_every"), ("train", "keep_checkpoints"),
    ("train", "figure_images"), ("data", "num_workers"), ("data", "cache_dir"),
    ("data", "data_dir"), ("data", "download_timeout"),
}


@dataclass
class FitResult:
    """What `Trainer.fit` returns."""

    best_metric: str
    best_value: float
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_completed: int = 0
    stopped_early: bool = False
    wall_time: float = 0.0


def metric_is_minimised(name: str) -> bool:
    """Losses and median ranks improve downwards; recalls and rsum upwards."""
    return name.endswith("loss") or name.endswith("medr")


def _val_key(name: str) -> str:
    return name if name.startswith("val_") else f"val_{name}"


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
        self.device = resolve_device(self.config.train.device)
        check_precision(self.config.train.precision, self.device)
        self.best_metric = _val_key(self.config.train.best_metric)
        self.model: CLIP | None = None
        self.train_model = None
        self.optimizer = None
        self.scheduler = None
        self.scaler = None
        self.loss_fn: ClipLoss | None = None
        self.logger: RunLogger | None = None
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {}
        self._resume_state: dict | None = None
        self._steps_per_epoch = 0
        self._batch_size = self.config.train.batch_size

    # ------------------------------------------------------------------ paths

    @property
    def run_dir(self) -> Path:
        """TensorBoard folder of this run: `<runs_dir>/<name>`."""
        return Path(self.config.runs_dir) / self.config.name

    @property
    def checkpoint_dir(self) -> Path:
        """Checkpoint folder of this run: `<checkpoints_dir>/<name>`."""
        return Path(self.config.checkpoints_dir) / self.config.name

    def _print(self, message: str) -> None:
        if self.show_progress:
            tqdm.write(message)

    # ------------------------------------------------------------------ setup

    def _find_resume_checkpoint(self) -> Path | None:
        if self.resume is None:
            return None
        if self.resume == "auto":
            path = self.checkpoint_dir / "last.pt"
            return path if path.is_file() else None
        path = Path(self.resume)
        if not path.is_file():
            raise CheckpointError(f"--resume {path}: no such file")
        return path

    def _avoid_overwriting_old_run(self) -> None:
        """A fresh run never writes into an existing run's folders: it takes a new name."""
        base, n = self.config.name, 1
        while any(p.exists() and any(p.iterdir()) for p in (self.run_dir, self.checkpoint_dir)):
            n += 1
            self.config.name = f"{base}-{n}"
        if n > 1:
            self._print(f"run {base!r} exists and resume is off: this run is named {self.config.name!r}")

    def prepare_data(self) -> PreparedData:
        """Load (or reuse) the dataset, its splits, image cache and tokenizer."""
        if self.data is None:
            tokenizer = None
            if self._resume_state is not None:
                tokenizer = Tokenizer.from_json(self._resume_state["tokenizer"])
            cfg = self.config
            self.data = prepare_data(
                cfg.data,
                image_size=cfg.model.image_size,
                seed=cfg.seed,
                vocab_size=cfg.model.vocab_size,
                context_length=cfg.model.context_length,
                tokenizer=tokenizer,
                quiet=not self.show_progress,
            )
        if self.data.image_size != self.config.model.image_size:
            raise ConfigError(
                f"the prepared data has {self.data.image_size}px images but "
                f"model.image_size={self.config.model.image_size}"
            )
        self.config.data.source = self.data.source
        return self.data

    def build_model(self) -> CLIP:
        """Create the model, loss, optimizer, schedule and (for fp16) the grad scaler."""
        cfg = self.config
        if self.data is None:
            self.prepare_data()
        seed_everything(cfg.seed)
        self.model = CLIP(cfg.model).to(self.device)
        self.train_model = torch.compile(self.model) if cfg.train.compile else self.model
        self.loss_fn = ClipLoss(
            hard_negative_weight=cfg.train.hard_negative_weight,
            hard_negative_k=cfg.train.hard_negative_k,
            hard_negative_margin=cfg.train.hard_negative_margin,
        )
        n_train = len(self.data.train)
        self._batch_size = min(cfg.train.batch_size, n_train)
        if self._batch_size < cfg.train.batch_size:
            self._print(
                f"notice: the train split has {n_train} images, fewer than "
                f"train.batch_size={cfg.train.batch_size}; using batches of {self._batch_size}"
            )
        batches = len(self._train_loader(epoch=1))
        self._steps_per_epoch = math.ceil(batches / cfg.train.grad_accum_steps)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.scheduler = build_scheduler(
            self.optimizer, self._steps_per_epoch * cfg.train.epochs, cfg.train
        )
        if cfg.train.precision == "fp16":
            self.scaler = torch.amp.GradScaler("cuda")
        return self.model

    def _train_loader(self, epoch: int) -> TrainLoader:
        cfg = self.config
        return TrainLoader(
            self.data.train,
            batch_size=self._batch_size,
            seed=cfg.seed,
            epoch=epoch,
            augment=cfg.data.augment,
            flip=self.data.flip_safe,
            all_captions=cfg.train.all_captions,
            num_workers=cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            crop_scale=self.data.crop_scale,
        )

    # ------------------------------------------------------------------ resume

    def _check_resume_config(self, saved: dict) -> None:
        current = config_to_dict(self.config)
        changed = []
        for section in ("data", "model", "train"):
            for key, value in saved[section].items():
                if (section, key) in RESUME_FREE_KEYS:
                    continue
                if current[section].get(key) != value:
                    changed.append(f"{section}.{key}: {value!r} -> {current[section].get(key)!r}")
        if saved.get("seed") != current["seed"]:
            changed.append(f"seed: {saved.get('seed')!r} -> {current['seed']!r}")
        if changed:
            raise ConfigError(
                f"cannot resume run {self.config.name!r}: its checkpoint was written with a "
                f"different config ({'; '.join(changed)}). Use the same settings, "
                "--no-resume to start a new run, or --run-name NAME."
            )

    def _load_resume_state(self, path: Path) -> None:
        state = self._resume_state
        self._check_resume_config(state["config"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = list(state.get("history", []))
        self.best = dict(state.get("best", {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._print(f"resuming {path} after epoch {self.epoch} (step {self.step})")

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Everything needed to resume or to use the model: config, tokenizer, weights, state."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "config": config_to_dict(self.config),
            "tokenizer": self.data.tokenizer.to_json(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "rng": rng,
            "metrics": metrics,
            "best": dict(self.best),
            "history": list(self.history),
        }

    def _save_epoch_checkpoints(self, metrics: dict[str, float], improved: bool) -> None:
        train = self.config.train
        if not train.save_checkpoints:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = self.checkpoint_state(metrics)
        if improved:
            save_checkpoint(state, self.checkpoint_dir / "best.pt")
        if train.checkpoint_every and self.epoch % train.checkpoint_every == 0:
            save_checkpoint(state, self.checkpoint_dir / f"epoch_{self.epoch}.pt")
            kept = sorted(
                self.checkpoint_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1])
            )
            for old in kept[: max(0, len(kept) - train.keep_checkpoints)]:
                old.unlink()
        # last.pt goes last: a resumed run never sees an epoch whose best.pt is missing.
        save_checkpoint(state, self.checkpoint_dir / "last.pt")

    # ------------------------------------------------------------------ training

    def _optimizer_step(self) -> float:
        params = self.model.parameters()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.config.train.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.clamp_logit_scale()
        self.step += 1
        return grad_norm

    def _diverged(self, value: float) -> TrainingDiverged:
        return TrainingDiverged(
            f"the training loss became {value} at epoch {self.epoch + 1}, step {self.step}. "
            f"Lower the learning rate (train.lr={self.config.train.lr:g}), raise "
            "train.warmup_fraction, or use train.precision=fp32; the last good checkpoint "
            f"is {self.checkpoint_dir / 'last.pt'}."
        )

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training split. Returns (mean loss, samples per second)."""
        cfg = self.config.train
        loader = self._train_loader(epoch)
        self.model.train()
        loss_total = torch.zeros((), device=self.device)
        window_loss = torch.zeros((), device=self.device)
        window_batches, window_samples, window_start = 0, 0, time.perf_counter()
        epoch_start, samples = time.perf_counter(), 0
        bar = tqdm(
            total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
            leave=False, disable=not self.show_progress, dynamic_ncols=True,
        )
        postfix: dict[str, str] = {}
        for index, (images, tokens) in enumerate(device_batches(loader, self.device)):
            with autocast(self.device, cfg.precision):
                image_emb, text_emb, logit_scale = self.train_model(images, tokens)
                loss = self.loss_fn(image_emb, text_emb, logit_scale)
            scaled = loss / cfg.grad_accum_steps
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_total += loss.detach()
            window_loss += loss.detach()
            window_batches += 1
            window_samples += images.shape[0]
            samples += images.shape[0]
            last = index + 1 == len(loader)
            if (index + 1) % cfg.grad_accum_steps == 0 or last:
                grad_norm = self._optimizer_step()
                if self.step % cfg.log_every == 0 or last:
                    mean_loss = window_loss.item() / window_batches  # the only sync per window
                    if not math.isfinite(mean_loss):
                        raise self._diverged(mean_loss)
                    rate = window_samples / (time.perf_counter() - window_start)
                    lr = self.scheduler.get_last_lr()[0]
                    scale = self.model.logit_scale.detach().exp().item()
                    if self.logger is not None:
                        self.logger.scalars(
                            {"loss": mean_loss, "lr": lr, "temperature": 1 / scale,
                             "logit_scale": scale, "grad_norm": float(grad_norm),
                             "samples_per_s": rate},
                            self.step, prefix="train/",
                        )
                    postfix = {"loss": f"{mean_loss:.3f}", "lr": f"{lr:.2e}", "samples/s": f"{rate:.0f}"}
                    window_loss.zero_()
                    window_batches, window_samples = 0, 0
                    window_start = time.perf_counter()
            bar.update(1)
            if postfix:
                bar.set_postfix(postfix, refresh=False)
        bar.close()
        mean = loss_total.item() / max(1, len(loader))
        if not math.isfinite(mean):
            raise self._diverged(mean)
        return mean, samples / (time.perf_counter() - epoch_start)

    # ------------------------------------------------------------------ evaluation

    def _embed(self, split_name: str):
        split = self.data.split(split_name)
        image_emb, text_emb = embed_split(
            self.model, split, batch_size=self.config.train.eval_batch_size,
            device=self.device, precision=self.config.train.precision,
        )
        return split, image_emb, text_emb

    def _metrics(self, split, image_emb, text_emb) -> dict[str, float]:
        metrics = retrieval_metrics(image_emb, text_emb, torch.as_tensor(split.caption_image))
        metrics["loss"] = split_loss(
            image_emb, text_emb, split, self.model.logit_scale.detach().float().cpu(),
            self.config.train.eval_batch_size,
        )
        return {key: float(value) for key, value in metrics.items()}

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Retrieval metrics and loss of the current weights on `split` (no key prefix)."""
        if self.model is None:
            self.build_model()
        return self._metrics(*self._embed(split))

    def _validate(self, epoch: int) -> dict[str, float]:
        split, image_emb, text_emb = self._embed("val")
        metrics = self._metrics(split, image_emb, text_emb)
        if self.logger is not None and self.config.train.figure_images > 0:
            first = torch.as_tensor(split.first_caption_index())
            similarity = image_emb @ text_emb.T
            count = min(self.config.train.figure_images, len(split))
            shown = torch.linspace(0, len(split) - 1, count).long().tolist()
            self.logger.figure(
                "val/retrieval",
                retrieval_figure(split.images, split.captions, split.caption_image, similarity, shown),
                epoch,
            )
            self.logger.figure("val/similarity", similarity_figure(similarity[:, first]), epoch)
        return metrics

    def _is_improvement(self, value: float) -> bool:
        if not self.best:
            return True
        if metric_is_minimised(self.best_metric):
            return value < self.best["value"]
        return value > self.best["value"]

    # ------------------------------------------------------------------ fit

    def hparams(self) -> dict[str, Any]:
        """The run's hyperparameters as flat `section.key` values for TensorBoard."""
        cfg = config_to_dict(self.config)
        flat: dict[str, Any] = {"seed": cfg["seed"], "data.source": cfg["data"]["source"]}
        for section in ("model", "train"):
            for key, value in cfg[section].items():
                flat[f"{section}.{key}"] = value
        flat.update(self.hparams_extra)
        return flat

    def _final_metrics(self) -> dict[str, float]:
        if not self.history:
            return {"hparam/epochs": 0.0}
        last = self.history[-1]
        losses = [h["val_loss"] for h in self.history]
        rsums = [h["val_rsum"] for h in self.history]
        return {
            "hparam/best_val_loss": min(losses),
            "hparam/best_val_rsum": max(rsums),
            "hparam/val_loss": last["val_loss"],
            "hparam/val_rsum": last["val_rsum"],
            "hparam/val_i2t_r1": last["val_i2t_r1"],
            "hparam/val_t2i_r1": last["val_t2i_r1"],
            "hparam/epochs": float(len(self.history)),
        }

    def _epoch_line(self, m: dict[str, float]) -> str:
        def recalls(prefix: str) -> str:
            return "/".join(f"{100 * m[f'val_{prefix}_r{k}']:.1f}" for k in (1, 5, 10))

        return (
            f"epoch {int(m['epoch'])}/{self.config.train.epochs} | loss {m['train_loss']:.3f} | "
            f"val_loss {m['val_loss']:.3f} | i2t R@1/5/10 {recalls('i2t')} | "
            f"t2i R@1/5/10 {recalls('t2i')} | temp {m['temperature']:.4f} | "
            f"{m['epoch_time']:.1f}s"
        )

    def fit(self) -> FitResult:
        """Train for `train.epochs` epochs (resuming if asked), validating after each epoch."""
        start = time.perf_counter()
        resume_path = self._find_resume_checkpoint()
        if resume_path is not None:
            self._resume_state = load_checkpoint(resume_path)
            saved_source = self._resume_state["config"]["data"]["source"]
            if self.config.data.source == "auto":
                self.config.data.source = saved_source
        elif self.resume is None:
            self._avoid_overwriting_old_run()
        self.prepare_data()
        self.build_model()
        if resume_path is not None:
            self._load_resume_state(resume_path)
            self._resume_state = None
        # purge_step drops what a killed run logged after its last checkpoint
        self.logger = RunLogger(self.run_dir, purge_step=self.step if resume_path else None)
        stopped_early = False
        try:
            stopped_early = self._fit_epochs()
        finally:
            self.logger.write_hparams(self.hparams(), self._final_metrics(), len(self.history))
            self.logger.close()
            self.logger = None
        best_metrics = {}
        if self.best:
            best_metrics = dict(self.history[int(self.best["epoch"]) - 1])
        result = FitResult(
            best_metric=self.best_metric,
            best_value=self.best.get("value", float("nan")),
            best_epoch=int(self.best.get("epoch", 0)),
            best_metrics=best_metrics,
            history=list(self.history),
            epochs_completed=self.epoch,
            stopped_early=stopped_early,
            wall_time=time.perf_counter() - start,
        )
        self._print(self._summary(result))
        return result

    def _fit_epochs(self) -> bool:
        cfg = self.config.train
        since_best = 0
        if self.history and self.best:
            since_best = self.epoch - int(self.best["epoch"])
        while self.epoch < cfg.epochs:
            epoch = self.epoch + 1
            epoch_start = time.perf_counter()
            train_loss, rate = self._train_epoch(epoch)
            self.epoch = epoch
            val = self._validate(epoch)
            metrics = {
                "epoch": float(epoch),
                "train_loss": train_loss,
                **{f"val_{key}": value for key, value in val.items()},
                "lr": self.scheduler.get_last_lr()[0],
                "temperature": float(1 / self.model.logit_scale.detach().exp()),
                "epoch_time": time.perf_counter() - epoch_start,
                "samples_per_s": rate,
            }
            self.history.append(metrics)
            if self.best_metric not in metrics:
                raise ConfigError(
                    f"train.best_metric={cfg.best_metric!r} is not a validation metric; "
                    f"choose one of: {', '.join(k[4:] for k in metrics if k.startswith('val_'))}"
                )
            improved = self._is_improvement(metrics[self.best_metric])
            if improved:
                self.best = {"value": metrics[self.best_metric], "epoch": float(epoch)}
                since_best = 0
            else:
                since_best += 1
            self.logger.scalars({k[4:]: v for k, v in metrics.items() if k.startswith("val_")},
                                epoch, prefix="val/")
            self.logger.scalars(
                {"train_loss": train_loss, "samples_per_s": rate,
                 "time": metrics["epoch_time"], "temperature": metrics["temperature"]},
                epoch, prefix="epoch/",
            )
            self._save_epoch_checkpoints(metrics, improved)
            self._print(self._epoch_line(metrics))
            for callback in self.callbacks:
                callback(self, epoch, metrics)
            if cfg.early_stopping_patience and since_best >= cfg.early_stopping_patience:
                self._print(
                    f"early stopping: {self.best_metric} has not improved for {since_best} epochs"
                )
                return True
        return False

    def _summary(self, result: FitResult) -> str:
        lines = [f"done: {result.epochs_completed} epochs in {result.wall_time:.0f}s"]
        if result.best_epoch:
            lines.append(
                f"best {result.best_metric} = {result.best_value:.4f} at epoch {result.best_epoch}"
            )
        if self.config.train.save_checkpoints:
            lines.append(f"checkpoints: {self.checkpoint_dir}/ (best.pt, last.pt)")
        lines.append(f"TensorBoard: {self.run_dir}/  ->  tensorboard --logdir {self.config.runs_dir}")
        return "\n".join(lines)

    def evaluate_best(self, splits: Sequence[str] = ("val", "test")) -> dict[str, dict[str, float]]:
        """Evaluate the best checkpoint (or the current weights) and write `metrics.json`."""
        if self.model is None:
            self.build_model()
        best_path = self.checkpoint_dir / "best.pt"
        source = "current weights"
        if best_path.is_file():
            self.model.load_state_dict(load_checkpoint(best_path, map_location=self.device)["model"])
            source = str(best_path)
        results: dict[str, Any] = {split: self.evaluate(split) for split in splits}
        if self.config.train.save_checkpoints:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            payload = {"weights": source, "best_epoch": int(self.best.get("epoch", 0)), **results}
            path = self.checkpoint_dir / "metrics.json"
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
            os.replace(tmp, path)
        return results
