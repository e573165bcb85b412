"""Evaluation of a model on one data split: embeddings, retrieval metrics, loss."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor

from cliptune import distributed
from cliptune.checkpoint import LoadedModel
from cliptune.data import Split, eval_batches, normalize_images, prepare_data
from cliptune.errors import DataError
from cliptune.loss import clip_loss, sigmoid_loss
from cliptune.metrics import retrieval_metrics
from cliptune.model import CLIP
from cliptune.runtime import autocast, resolve_precision


@torch.no_grad()
def embed_split(
    model: CLIP,
    split: Split,
    *,
    batch_size: int,
    device: str | torch.device,
    precision: str = "auto",
    sharded: bool = False,
) -> tuple[Tensor, Tensor]:
    """Embed every image and every caption of `split`, in order.

    With `sharded` under torchrun, each rank embeds a contiguous share of the images and
    captions and every rank returns them all (a collective: every rank must call it).

    Returns `(image_emb (N, D), text_emb (M, D))`, float32 on the CPU. The model runs
    in eval mode; its previous train/eval mode is restored afterwards. `precision`
    `auto` resolves for `device` as in training (see `resolve_precision`). On a GPU the
    images are read into page-locked memory and copied asynchronously, and the batches'
    embeddings are collected on the device (no sync per batch: the GPU embeds one batch
    while the next is read), then gathered and copied to the CPU once, at the end.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if len(split.image_names) == 0 or len(split.tokens) == 0:
        raise DataError(f"the {split.name} split has no images or no captions to evaluate")
    tokens = torch.as_tensor(split.tokens)
    image_rows, text_rows = _share(len(split), sharded), _share(len(tokens), sharded)
    empty = torch.zeros((0, model.config.embed_dim), device=device)  # a rank with no share
    was_training = model.training
    model.eval()
    try:
        with autocast(device, precision):
            images = [empty] + [
                model.encode_image(normalize_images(batch.to(device, non_blocking=True))).float()
                for batch in eval_batches(split, batch_size, image_rows, device.type == "cuda")
            ]
            texts = [empty] + [
                model.encode_text(tokens[start : min(start + batch_size, text_rows.stop)]
                                  .to(device)).float()
                for start in range(text_rows.start, text_rows.stop, batch_size)
            ]
    finally:
        model.train(was_training)
    image_emb, text_emb = torch.cat(images), torch.cat(texts)
    if sharded:
        image_emb, text_emb = distributed.all_gather_rows(image_emb), distributed.all_gather_rows(text_emb)
    return image_emb.cpu(), text_emb.cpu()


def _share(count: int, sharded: bool) -> range:
    """The rows this process embeds: all `count`, or with `sharded` its rank's contiguous part."""
    ctx = distributed.current()
    if not sharded:
        return range(count)
    return range(ctx.rank * count // ctx.world_size, (ctx.rank + 1) * count // ctx.world_size)


def split_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    split: Split,
    logit_scale: Tensor | float,
    batch_size: int,
    logit_bias: Tensor | float | None = None,
) -> float:
    """Contrastive loss of a split, independent of the batch size used for training.

    Each image is paired with its first caption; the pairs are cut, in order, into
    consecutive chunks of `batch_size` (a last chunk of one pair, which would have no
    negatives, joins the previous chunk); the result is the size-weighted mean of
    `clip_loss` over the chunks, or of `sigmoid_loss` when a SigLIP model's `logit_bias`
    is given.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 for a contrastive loss, got {batch_size}")
    texts = text_emb[torch.as_tensor(split.first_caption_index(), device=text_emb.device)]
    loss = clip_loss if logit_bias is None else sigmoid_loss
    scale_and_bias = [torch.as_tensor(value, dtype=torch.float32, device=image_emb.device)
                      for value in (logit_scale, logit_bias) if value is not None]
    count = len(image_emb)
    bounds = [*range(0, count, batch_size), count]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    total = sum(
        loss(image_emb[start:end], texts[start:end], *scale_and_bias).item() * (end - start)
        for start, end in pairwise(bounds)
    )
    return total / count


def embedding_metrics(
    image_emb: Tensor, text_emb: Tensor, split: Split, logit_scale: Tensor | float,
    batch_size: int, logit_bias: Tensor | float | None = None,
) -> dict[str, float]:
    """Retrieval metrics (see `retrieval_metrics`) plus `loss` (see `split_loss`) of a split's
    embeddings, as plain floats."""
    metrics = retrieval_metrics(image_emb, text_emb, torch.as_tensor(split.caption_image))
    metrics["loss"] = split_loss(image_emb, text_emb, split, logit_scale, batch_size, logit_bias)
    return {key: float(value) for key, value in metrics.items()}


def evaluate_split(
    model: CLIP,
    split: Split,
    *,
    batch_size: int,
    device: str | torch.device,
    precision: str = "auto",
    sharded: bool = False,
    return_embeddings: bool = False,
) -> dict[str, float] | tuple[dict[str, float], Tensor, Tensor]:
    """Embed `split` and score it (see `embedding_metrics`): the one evaluation of a split,
    used by the Trainer, `evaluate.py` and the HPO code alike.

    With `sharded` under torchrun (a collective: every rank calls it) each rank embeds its
    share, rank 0 scores the gathered embeddings and every rank gets its metrics. With
    `return_embeddings`, returns `(metrics, image_emb, text_emb)` (as `embed_split`).
    """
    image_emb, text_emb = embed_split(
        model, split, batch_size=batch_size, device=device, precision=precision,
        sharded=sharded,
    )
    metrics = None
    if not sharded or distributed.current().is_main:
        bias = None if model.logit_bias is None else model.logit_bias.detach().float().cpu()
        metrics = embedding_metrics(
            image_emb, text_emb, split, model.logit_scale.detach().float().cpu(), batch_size, bias
        )
    if sharded:
        metrics = distributed.broadcast_object(metrics)
    return (metrics, image_emb, text_emb) if return_embeddings else metrics


def checkpoint_split(loaded: LoadedModel, name: str, *, quiet: bool = False) -> Split:
    """The split `name` exactly as the checkpoint's run saw it: its data config (as the
    caller may have edited it in `loaded.config.data`) and its tokenizer."""
    config = loaded.config
    data = prepare_data(
        config.data,
        image_size=config.model.image_size,
        vocab_size=config.model.vocab_size,
        context_length=config.model.context_length,
        tokenizer=loaded.tokenizer,
        quiet=quiet,
    )
    return data.split(name)
