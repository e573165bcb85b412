"""One training epoch: forward, loss, backward, optimizer step, with gradient accumulation.

The same function trains on one process and under DistributedDataParallel: `model` is
then the DDP wrapper, whose gradient all-reduce runs only on the last micro-batch of
each accumulation window (`no_sync` before). Logged losses are means over the ranks,
so every rank sees the same numbers and stops together on a diverged loss.

Two kinds of accumulation window: plain (each batch its own contrastive loss, the
gradients averaged) and, with `train.accum_features`, contrastive (GradCache, OpenCLIP's
`--accum-freq`): the window's batches are one contrastive batch, see `_contrastive_window`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from cliptune import distributed
from cliptune.config import TrainConfig
from cliptune.errors import TrainingDiverged
from cliptune.runtime import autocast, seed_batch
from cliptune.training.state import TrainState

# step -> scalars such as {"loss": ..., "lr": ...}, called every `log_every` optimizer steps
StepLogger = Callable[[int, dict[str, float]], None]


@dataclass
class EpochStats:
    """What one epoch of training measured (losses are means over all ranks)."""

    loss: float
    samples_per_s: float


def window_sizes(n_batches: int, accum: int) -> list[int]:
    """Micro-batches in the accumulation window of each batch: `accum`, except the last,
    partial window of an epoch, whose batches share its smaller size (so each window's
    gradient is a mean over its batches, weighted like every other window)."""
    return [min(accum, n_batches - (i // accum) * accum) for i in range(n_batches)]


def diverged(value: float, state: TrainState, config: TrainConfig, last: str) -> TrainingDiverged:
    """The error for a non-finite training loss, with what to change."""
    return TrainingDiverged(
        f"the training loss became {value} at epoch {state.epoch + 1}, step {state.step}. "
        f"Lower the learning rate (train.lr={config.lr:g}), raise train.warmup_fraction, or "
        f"use train.precision=fp32; the last good checkpoint is {last}."
    )


def train_one_epoch(
    state: TrainState,
    model: nn.Module,
    loss_fn: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    n_batches: int,
    *,
    config: TrainConfig,
    device: torch.device,
    precision: str,
    seed: int = 0,
    log: StepLogger | None = None,
    progress: bool = False,
    checkpoint_hint: str = "last.pt",
    position: dict | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> EpochStats:
    """Train `state` over batches `start` to `n_batches` of an epoch (`batches` yields
    those, images and tokens already on `device`).

    `model` is `state.model` or its DDP wrapper. A resumed epoch passes its saved
    `position`: the batches done (`batches`, an accumulation-window boundary), the
    rank-mean loss sum over them (`loss`) and over the unlogged log window (`window_loss`,
    `window_batches`), so the resumed run logs what the uninterrupted one logged.
    `on_step(position)` runs on every rank every `config.checkpoint_every_steps` optimizer
    steps but at the epoch's end (mid-epoch checkpoints), with that position (rank means:
    every rank joins the collectives). Returns the epoch's mean
    loss and the samples per second of the whole job (all ranks). Each batch seeds torch
    from (`seed`, epoch, batch, rank), so dropout differs between ranks and a resumed
    run, mid-epoch included, draws what the uninterrupted one drew.
    """
    ctx = distributed.current()
    sizes = window_sizes(n_batches, config.grad_accum_steps)
    contrastive = config.accum_features and config.grad_accum_steps > 1
    state.model.train()
    position = position or {}
    start = int(position.get("batches", 0))
    loss_total = torch.full((), float(position.get("loss", 0.0)), device=device)
    window_loss = torch.full((), float(position.get("window_loss", 0.0)), device=device)
    window_batches = int(position.get("window_batches", 0))
    window_samples, window_start = 0, time.perf_counter()
    epoch_start, samples = time.perf_counter(), 0
    bar = tqdm(total=n_batches, initial=start, desc=f"epoch {state.epoch + 1}/{config.epochs}", unit="batch",
               leave=False, disable=not progress, dynamic_ncols=True)
    postfix: dict[str, str] = {}
    window: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for index, (images, tokens) in enumerate(batches, start=start):
        window_end = (index + 1) % config.grad_accum_steps == 0 or index + 1 == n_batches
        if contrastive:
            window.append((index, images, tokens))
            if window_end:
                # the window's one loss counts once per batch, as the plain losses do
                loss = _contrastive_window(window, state, model, loss_fn, seed=seed,
                                           device=device, precision=precision) * len(window)
                window.clear()
        else:
            seed_batch(seed, state.epoch + 1, index, ctx.rank)  # dropout: per rank and batch
            sync = contextlib.nullcontext()
            if ctx.enabled and not window_end:
                sync = model.no_sync()  # all-reduce the gradients once per window
            with sync:
                with autocast(device, precision):
                    loss = loss_fn(*model(images, tokens))
                _backward(state, loss / sizes[index])
        if not contrastive or window_end:
            loss_total += loss.detach()
            window_loss += loss.detach()
        window_batches += 1
        batch_samples = images.shape[0] * ctx.world_size
        window_samples += batch_samples
        samples += batch_samples
        if window_end:
            grad_norm = state.optimizer_step(config.grad_clip)
            last = index + 1 == n_batches
            if state.step % config.log_every == 0 or last:
                # the only host sync of a log window
                mean_loss = distributed.all_reduce_mean(window_loss).item() / window_batches
                if not math.isfinite(mean_loss):
                    raise diverged(mean_loss, state, config, checkpoint_hint)
                rate = window_samples / (time.perf_counter() - window_start)
                lr = state.scheduler.get_last_lr()[0]
                scale = state.model.logit_scale.detach().exp().item()
                if log is not None:
                    log(state.step, {"loss": mean_loss, "lr": lr, "temperature": 1 / scale,
                                     "logit_scale": scale, "grad_norm": float(grad_norm),
                                     "samples_per_s": rate})
                postfix = {"loss": f"{mean_loss:.3f}", "lr": f"{lr:.2e}",
                           "samples/s": f"{rate:.0f}"}
                window_loss.zero_()
                window_batches, window_samples = 0, 0
                window_start = time.perf_counter()
            every = config.checkpoint_every_steps
            if on_step is not None and every and state.step % every == 0 and not last:
                on_step({"batches": index + 1,
                         "loss": distributed.all_reduce_mean(loss_total).item(),
                         "window_loss": distributed.all_reduce_mean(window_loss).item(),
                         "window_batches": window_batches})
        bar.update(1)
        if postfix:
            bar.set_postfix(postfix, refresh=False)
    bar.close()
    mean = distributed.all_reduce_mean(loss_total).item() / max(1, n_batches)
    if not math.isfinite(mean):
        raise diverged(mean, state, config, checkpoint_hint)
    return EpochStats(mean, samples / (time.perf_counter() - epoch_start))


def _backward(state: TrainState, loss: torch.Tensor) -> None:
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()


def _contrastive_window(
    window: list[tuple[int, torch.Tensor, torch.Tensor]],
    state: TrainState,
    model: nn.Module,
    loss_fn: nn.Module,
    *,
    seed: int,
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """Backward of ONE contrastive loss over all the window's batches (GradCache, Gao et
    al. 2021; OpenCLIP's `--accum-freq`); returns that loss.

    Pass 1 embeds every batch without gradient and caches the features. Pass 2 embeds each
    batch again with gradient, puts its features in place of its cached rows, and
    backpropagates the loss over the whole window: its rows get their exact share of the
    big batch's gradient, with one batch's activations in memory. Each batch is seeded the
    same in both passes (`seed_batch`), so dropout draws the same masks and the cached
    features are the ones pass 2 computes. The model's other outputs (the log-scale, and
    any other per-model scalars the loss takes) keep their gradient in the last batch
    only, so it counts once, not once per batch; that is also the backward where DDP
    all-reduces (`no_sync` before)."""
    ctx = distributed.current()
    cached_images, cached_texts = [], []
    with torch.no_grad():
        for index, images, tokens in window:
            seed_batch(seed, state.epoch + 1, index, ctx.rank)
            with autocast(device, precision):
                image_emb, text_emb, *_ = model(images, tokens)
            cached_images.append(image_emb)
            cached_texts.append(text_emb)
    for j, (index, images, tokens) in enumerate(window):
        seed_batch(seed, state.epoch + 1, index, ctx.rank)
        last = j == len(window) - 1
        sync = model.no_sync() if ctx.enabled and not last else contextlib.nullcontext()
        with sync:
            with autocast(device, precision):
                image_emb, text_emb, *scalars = model(images, tokens)
                features = [torch.cat([*column[:j], live, *column[j + 1:]])
                            for column, live in ((cached_images, image_emb), (cached_texts, text_emb))]
                loss = loss_fn(*features, *(s if last else s.detach() for s in scalars))
            _backward(state, loss)
    return loss.detach()
