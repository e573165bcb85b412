"""Cross-modal retrieval metrics with the multi-caption protocol (VSE++, CLIP_benchmark).

Image -> text: each image queries every caption; it scores a hit at K if ANY of its
own captions is in the top K, and its rank is the best rank among its captions.
Text -> image: each caption queries every image; its rank is that of its one image.

Ties are resolved pessimistically: a wrong item scoring exactly as high as the
correct one is ranked before it. So the metrics never depend on the order of the
items, and a collapsed model (all scores equal) gets the worst ranks, not the best.
Non-finite similarities (a diverged model) count as the lowest possible score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class Metric:
    """A metric's key, its label in tables, its direction and how it is shown."""

    key: str
    label: str
    minimised: bool = False  # losses and median ranks improve downwards
    percent: bool = False  # a fraction in [0, 1], shown in percent


# The one registry of metrics: training (best epoch), HPO (objective direction), console
# tables, study reports and retraining all read it.
METRICS = {m.key: m for m in (
    *(Metric(f"{d}_r{k}", f"{d} R@{k}", percent=True) for d in ("i2t", "t2i") for k in RECALL_KS),
    Metric("rsum", "rsum"),
    Metric("i2t_medr", "i2t medr", minimised=True),
    Metric("t2i_medr", "t2i medr", minimised=True),
    Metric("loss", "loss", minimised=True),
)}
RECALLS = tuple(key for key, m in METRICS.items() if m.percent)
SCORES = (*RECALLS, "rsum", "loss")  # what a study's reports and retraining summarise


def metric_is_minimised(name: str) -> bool:
    """Whether metric `name` (a registry key, or one with its split prefix: `val_loss`)
    improves downwards; keys outside the registry count as improving upwards."""
    key = name.split("_", 1)[1] if name.startswith(("val_", "test_")) else name
    metric = METRICS.get(key)
    return metric is not None and metric.minimised

# Similarity entries per chunk of queries: bounds the working memory to a few hundred
# MB whatever the split size (31k images x 155k captions in about 300 chunks).
_CHUNK_ELEMENTS = 1 << 24


def retrieval_metrics(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor) -> dict:
    """Recall@1/5/10 and median rank in both directions, plus rsum.

    `image_emb` (N, D) and `text_emb` (M, D) are L2-normalised embeddings (cosine
    similarity = dot product); `text_to_image[j]` is the index of caption j's image.
    Every image must have at least one caption. Returns `i2t_r{1,5,10}` and
    `t2i_r{1,5,10}` as fractions in [0, 1], `rsum` (the six recalls in percent, summed:
    0..600) and `i2t_medr`, `t2i_medr` (1-based median ranks; for an even count the
    floor of the mean of the two middle ranks, as in VSE++).
    """
    image_emb, text_emb = image_emb.float(), text_emb.float()
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long, device=text_emb.device)
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    if text_to_image.shape != (num_texts,):
        raise ValueError(
            f"text_to_image has shape {tuple(text_to_image.shape)}, expected ({num_texts},)"
        )
    if num_images == 0 or num_texts == 0:
        raise ValueError("retrieval metrics need at least one image and one caption")
    if text_to_image.min() < 0 or text_to_image.max() >= num_images:
        raise ValueError(f"text_to_image holds indices outside [0, {num_images})")
    if torch.bincount(text_to_image, minlength=num_images).min() == 0:
        raise ValueError("every image needs at least one caption in text_to_image")

    i2t = _image_to_text_ranks(image_emb, text_emb, text_to_image)
    t2i = _text_to_image_ranks(image_emb, text_emb, text_to_image)
    metrics: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in RECALL_KS:
            metrics[f"{direction}_r{k}"] = (ranks <= k).double().mean().item()
    metrics["rsum"] = 100.0 * sum(metrics[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    metrics["i2t_medr"] = _median_rank(i2t)
    metrics["t2i_medr"] = _median_rank(t2i)
    return metrics


def _similarities(queries: Tensor, items: Tensor) -> Tensor:
    scores = queries @ items.T
    return torch.nan_to_num(scores, nan=-math.inf, posinf=-math.inf, neginf=-math.inf)


def _chunks(num_queries: int, num_items: int) -> range:
    size = max(1, _CHUNK_ELEMENTS // max(1, num_items))
    return range(0, num_queries, size)


def _image_to_text_ranks(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor) -> Tensor:
    """1-based rank of each image's best-ranked caption."""
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    step = _chunks(num_images, num_texts).step
    ranks = []
    for start in _chunks(num_images, num_texts):
        scores = _similarities(image_emb[start : start + step], text_emb)
        image_ids = torch.arange(start, start + scores.shape[0], device=scores.device)
        positive = text_to_image.unsqueeze(0) == image_ids.unsqueeze(1)
        best_positive = scores.masked_fill(~positive, -math.inf).amax(dim=1, keepdim=True)
        ranks.append(1 + ((scores >= best_positive) & ~positive).sum(dim=1))
    return torch.cat(ranks)


def _text_to_image_ranks(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor) -> Tensor:
    """1-based rank of each caption's image."""
    num_images, num_texts = image_emb.shape[0], text_emb.shape[0]
    step = _chunks(num_texts, num_images).step
    ranks = []
    for start in _chunks(num_texts, num_images):
        scores = _similarities(text_emb[start : start + step], image_emb)
        targets = text_to_image[start : start + scores.shape[0]].unsqueeze(1)
        target_scores = scores.gather(1, targets)
        beats_target = scores >= target_scores
        beats_target.scatter_(1, targets, False)
        ranks.append(1 + beats_target.sum(dim=1))
    return torch.cat(ranks)


def _median_rank(ranks: Tensor) -> float:
    ordered = ranks.sort().values.double()
    middle = (ordered.numel() - 1) // 2
    if ordered.numel() % 2:
        return float(ordered[middle])
    return float(math.floor((ordered[middle] + ordered[middle + 1]).item() / 2))
