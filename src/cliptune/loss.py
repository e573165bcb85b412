"""Contrastive losses for CLIP: symmetric InfoNCE (`ClipLoss`, with an optional
hard-negative margin term) and SigLIP's pairwise sigmoid (`SigLipLoss`).

Similarities are computed in float32 with autocast switched off, so the loss is
accurate under bf16/fp16 training. Both losses are data-parallel as in OpenCLIP
(gather-with-grad + local loss): under torchrun each rank all-gathers the features of
the global batch with gradient, scores its local rows against all columns (logits
local x global, memory linear in the global batch) with the positives at
`arange(B_local) + B_local * rank`. DDP's gradient average then equals the gradient of
the one-process loss on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cliptune import distributed


def _logits(
    queries: torch.Tensor, keys: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """`exp(logit_scale) * queries @ keys.T` in float32, whatever autocast says."""
    with torch.autocast(queries.device.type, enabled=False):
        return logit_scale.float().exp() * queries.float() @ keys.float().T


def _info_nce(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    all_image_emb: torch.Tensor,
    all_text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    label_offset: int,
) -> torch.Tensor:
    """Mean of image->text and text->image cross-entropy for the local rows."""
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + label_offset
    image_to_text = F.cross_entropy(_logits(image_emb, all_text_emb, logit_scale), labels)
    text_to_image = F.cross_entropy(_logits(text_emb, all_image_emb, logit_scale), labels)
    return (image_to_text + text_to_image) / 2


def _hard_negative_hinge(
    queries: torch.Tensor, keys: torch.Tensor, label_offset: int, k: int, margin: float
) -> torch.Tensor:
    """Mean of `relu(margin - s(q, positive) + s(q, negative))` over each query's k hardest
    negatives, with cosine similarities s."""
    with torch.autocast(queries.device.type, enabled=False):
        sims = queries.float() @ keys.float().T
    if sims.shape[1] < 2:  # a batch of one has no negatives
        return sims.new_zeros(())
    rows = torch.arange(sims.shape[0], device=sims.device)
    positives = sims[rows, rows + label_offset]
    negatives = sims.clone()
    negatives[rows, rows + label_offset] = float("-inf")
    hardest = negatives.topk(min(k, sims.shape[1] - 1), dim=1).values
    return F.relu(margin - positives[:, None] + hardest).mean()


def _sigmoid(
    image_emb: torch.Tensor,
    all_text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    label_offset: int,
) -> torch.Tensor:
    """SigLIP over the local image rows: `-sum_j log sigmoid(z_ij (logit_ij + bias))` per
    row, z = +1 for the matching caption and -1 for every other, summed and divided by
    the local rows (as OpenCLIP's `SigLipLoss`)."""
    with torch.autocast(image_emb.device.type, enabled=False):
        logits = _logits(image_emb, all_text_emb, logit_scale) + logit_bias.float()
        signs = torch.full_like(logits, -1.0)
        rows = torch.arange(logits.shape[0], device=logits.device)
        signs[rows, rows + label_offset] = 1.0
        return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over `logit_scale.exp() * image_emb @ text_emb.T`; pair i matches i.

    `logit_scale` is the LOG scale, as `CLIP.forward` returns it.
    """
    return _info_nce(image_emb, text_emb, image_emb, text_emb, logit_scale, label_offset=0)


def sigmoid_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """SigLIP's loss over `logit_scale.exp() * image_emb @ text_emb.T + logit_bias`; pair i
    matches i. `logit_scale` is the LOG scale, `logit_bias` the bias as `CLIP.forward`
    returns them."""
    return _sigmoid(image_emb, text_emb, logit_scale, logit_bias, label_offset=0)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE plus `hard_negative_weight` x a margin loss on hard negatives.

    The hard-negative term (off by default) takes, for every image and every caption,
    the `hard_negative_k` most similar mismatched partners in the batch and penalises
    each that comes within `hard_negative_margin` (cosine similarity) of the true pair.
    """

    def __init__(
        self,
        hard_negative_weight: float = 0.0,
        hard_negative_k: int = 5,
        hard_negative_margin: float = 0.2,
    ):
        super().__init__()
        self.hard_negative_weight = hard_negative_weight
        self.hard_negative_k = hard_negative_k
        self.hard_negative_margin = hard_negative_margin
        self.rank = distributed.current().rank

    def gather(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the whole global batch, this rank's rows at `rank * local_batch`.

        The identity on one process; under torchrun one all-gather (with gradient) of
        both features, concatenated so the two travel in one collective.
        """
        if not distributed.current().enabled:
            return image_emb, text_emb
        width = image_emb.shape[1]
        both = distributed.all_gather_with_grad(torch.cat([image_emb.float(), text_emb.float()], 1))
        return both[:, :width], both[:, width:]

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        """Scalar loss for L2-normalised embeddings and the log-scale from `CLIP.forward`."""
        all_image_emb, all_text_emb = self.gather(image_emb, text_emb)
        offset = self.rank * image_emb.shape[0]
        loss = _info_nce(image_emb, text_emb, all_image_emb, all_text_emb, logit_scale, offset)
        if self.hard_negative_weight > 0:
            k, margin = self.hard_negative_k, self.hard_negative_margin
            hinge = (
                _hard_negative_hinge(image_emb, all_text_emb, offset, k, margin)
                + _hard_negative_hinge(text_emb, all_image_emb, offset, k, margin)
            ) / 2
            loss = loss + self.hard_negative_weight * hinge
        return loss


class SigLipLoss(nn.Module):
    """SigLIP (Zhai et al., 2023): an independent sigmoid per image-caption pair, with the
    model's learnable scale and bias, instead of a softmax over the batch.

    Under torchrun only the text features are gathered (each pair is scored once, by the
    rank that holds its image); OpenCLIP passes them from neighbour to neighbour instead,
    with the same result.
    """

    def __init__(self):
        super().__init__()
        self.rank = distributed.current().rank

    def gather(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Caption features of the whole global batch, this rank's rows at
        `rank * local_batch`: the identity on one process, else an all-gather with gradient."""
        if not distributed.current().enabled:
            return text_emb
        return distributed.all_gather_with_grad(text_emb.float())

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar loss for L2-normalised embeddings and the log-scale and bias from
        `CLIP.forward`."""
        offset = self.rank * image_emb.shape[0]
        return _sigmoid(image_emb, self.gather(text_emb), logit_scale, logit_bias, offset)
