"""Tests for cliptune.loss against naive reference computations, and a tiny overfit."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss as OpenClipSigLipLoss

from cliptune.config import ModelConfig
from cliptune.loss import ClipLoss, SigLipLoss, clip_loss, sigmoid_loss
from cliptune.model import CLIP


def unit_vectors(n: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_info_nce(
    image_emb, text_emb, logit_scale: float, all_image=None, all_text=None, offset: int = 0
) -> float:
    """Loops over local rows; columns range over all (gathered) features."""
    all_image = image_emb if all_image is None else all_image
    all_text = text_emb if all_text is None else all_text

    def cross_entropy(queries, keys):
        total = 0.0
        for i, query in enumerate(queries.tolist()):
            logits = [
                math.exp(logit_scale) * sum(a * b for a, b in zip(query, key, strict=True))
                for key in keys.tolist()
            ]
            top = max(logits)
            log_denominator = top + math.log(sum(math.exp(x - top) for x in logits))
            total += log_denominator - logits[i + offset]
        return total / len(queries)

    return (cross_entropy(image_emb, all_text) + cross_entropy(text_emb, all_image)) / 2


def reference_hinge(queries, keys, k: int, margin: float, offset: int = 0) -> float:
    terms = []
    for i, query in enumerate(queries.tolist()):
        sims = [sum(a * b for a, b in zip(query, key, strict=True)) for key in keys.tolist()]
        positive = sims[i + offset]
        negatives = sorted((s for j, s in enumerate(sims) if j != i + offset), reverse=True)
        terms += [max(0.0, margin - positive + s) for s in negatives[:k]]
    return sum(terms) / len(terms)


def test_clip_loss_matches_reference():
    image_emb, text_emb = unit_vectors(6, 8, seed=0), unit_vectors(6, 8, seed=1)
    logit_scale = torch.tensor(math.log(1 / 0.07))
    expected = reference_info_nce(image_emb, text_emb, logit_scale.item())
    assert clip_loss(image_emb, text_emb, logit_scale).item() == pytest.approx(expected, rel=1e-5)
    assert ClipLoss()(image_emb, text_emb, logit_scale).item() == pytest.approx(expected, rel=1e-5)


def test_hard_negative_term_matches_reference():
    image_emb, text_emb = unit_vectors(7, 8, seed=2), unit_vectors(7, 8, seed=3)
    logit_scale = torch.tensor(2.0)
    loss = ClipLoss(hard_negative_weight=0.5, hard_negative_k=3, hard_negative_margin=0.3)
    hinge = (
        reference_hinge(image_emb, text_emb, 3, 0.3) + reference_hinge(text_emb, image_emb, 3, 0.3)
    ) / 2
    expected = reference_info_nce(image_emb, text_emb, 2.0) + 0.5 * hinge
    assert hinge > 0
    assert loss(image_emb, text_emb, logit_scale).item() == pytest.approx(expected, rel=1e-5)


def test_hard_negative_k_larger_than_batch_uses_all_negatives():
    image_emb, text_emb = unit_vectors(3, 4, seed=4), unit_vectors(3, 4, seed=5)
    loss = ClipLoss(hard_negative_weight=1.0, hard_negative_k=10, hard_negative_margin=0.5)
    hinge = (
        reference_hinge(image_emb, text_emb, 10, 0.5) + reference_hinge(text_emb, image_emb, 10, 0.5)
    ) / 2
    expected = reference_info_nce(image_emb, text_emb, 0.0) + hinge
    assert loss(image_emb, text_emb, torch.tensor(0.0)).item() == pytest.approx(expected, rel=1e-5)


def test_gathered_features_offset_labels_by_rank():
    everything_image, everything_text = unit_vectors(8, 6, seed=6), unit_vectors(8, 6, seed=7)

    class SecondOfTwoRanks(ClipLoss):
        def __init__(self):
            super().__init__(hard_negative_weight=1.0, hard_negative_k=2)
            self.rank = 1

        def gather(self, image_emb, text_emb):
            return (
                torch.cat([everything_image[:4], image_emb]),
                torch.cat([everything_text[:4], text_emb]),
            )

    local_image, local_text = everything_image[4:], everything_text[4:]
    hinge = (
        reference_hinge(local_image, everything_text, 2, 0.2, offset=4)
        + reference_hinge(local_text, everything_image, 2, 0.2, offset=4)
    ) / 2
    expected = (
        reference_info_nce(
            local_image, local_text, 1.5, everything_image, everything_text, offset=4
        )
        + hinge
    )
    got = SecondOfTwoRanks()(local_image, local_text, torch.tensor(1.5))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_siglip_equals_openclip_in_value_and_every_gradient():
    image_emb = unit_vectors(6, 8, seed=12).requires_grad_()
    text_emb = unit_vectors(6, 8, seed=13).requires_grad_()
    logit_scale = torch.tensor(math.log(10.0) + 0.4, requires_grad=True)
    logit_bias = torch.tensor(-7.5, requires_grad=True)
    inputs = [image_emb, text_emb, logit_scale, logit_bias]
    ours = SigLipLoss()(image_emb, text_emb, logit_scale, logit_bias)
    ours_grads = torch.autograd.grad(ours, inputs)
    # OpenCLIP's model hands its loss the scale itself, ours the log-scale
    theirs = OpenClipSigLipLoss()(image_emb, text_emb, logit_scale.exp(), logit_bias)
    theirs_grads = torch.autograd.grad(theirs, inputs)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    for name, got, expected in zip(("image", "text", "scale", "bias"), ours_grads, theirs_grads,
                                   strict=True):
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=name)
    plain = sigmoid_loss(image_emb, text_emb, logit_scale, logit_bias)
    assert plain.item() == pytest.approx(ours.item(), rel=1e-6)


def test_siglip_local_rows_score_against_gathered_texts_at_the_rank_offset():
    image_emb, text_emb = unit_vectors(8, 6, seed=14), unit_vectors(8, 6, seed=15)
    scale, bias = torch.tensor(2.0), torch.tensor(-3.0)
    logits = scale.exp() * image_emb[4:] @ text_emb.T + bias
    signs = -torch.ones(4, 8)
    signs[torch.arange(4), torch.arange(4) + 4] = 1
    expected = -F.logsigmoid(signs * logits).sum() / 4

    class SecondOfTwoRanks(SigLipLoss):
        def __init__(self):
            super().__init__()
            self.rank = 1

        def gather(self, local_text):
            return torch.cat([text_emb[:4], local_text])

    got = SecondOfTwoRanks()(image_emb[4:], text_emb[4:], scale, bias)
    torch.testing.assert_close(got, expected)


def test_loss_is_float32_under_bf16_autocast():
    image_emb = unit_vectors(16, 32, seed=8).bfloat16()
    text_emb = unit_vectors(16, 32, seed=9).bfloat16()
    logit_scale = torch.tensor(math.log(100.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ClipLoss(hard_negative_weight=1.0)(image_emb, text_emb, logit_scale)
    exact = ClipLoss(hard_negative_weight=1.0)(image_emb.float(), text_emb.float(), logit_scale)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)
    bias = torch.tensor(-10.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = SigLipLoss()(image_emb, text_emb, logit_scale, bias)
    exact = SigLipLoss()(image_emb.float(), text_emb.float(), logit_scale, bias)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)


def test_gradient_reaches_logit_scale():
    logit_scale = torch.tensor(1.0, requires_grad=True)
    clip_loss(unit_vectors(4, 8, seed=10), unit_vectors(4, 8, seed=11), logit_scale).backward()
    assert logit_scale.grad is not None and logit_scale.grad.item() != 0


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    config = ModelConfig(
        embed_dim=16, image_size=16, patch_size=8, vision_width=32, vision_layers=1,
        vision_heads=2, text_width=32, text_layers=1, text_heads=2, context_length=8,
        vocab_size=32,
    )
    model = CLIP(config)
    images = torch.randn(8, 3, 16, 16)
    tokens = torch.randint(3, 32, (8, 8))
    tokens[:, 0], tokens[:, -1] = 1, 2
    criterion = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = criterion(*model(images, tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.clamp_logit_scale()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(8), rel=0.3)  # chance level at init
    assert losses[-1] < 0.2 * losses[0]
