"""Retrieval metrics: hand-computed ranks, the multi-caption protocol, ties, a naive reference."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from cliptune import metrics
from cliptune.metrics import retrieval_metrics

KEYS = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "i2t_medr", "t2i_medr"}


def from_scores(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings whose image x caption similarity matrix is exactly `scores`."""
    num_images = scores.shape[0]
    return torch.eye(num_images, dtype=torch.float64), scores.T.contiguous()


def normalized(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def test_hand_built_ranks():
    # rows: images, columns: captions; captions 0 and 1 belong to image 0.
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.3],  # best own caption (c1) first: rank 1
            [0.8, 0.7, 0.6, 0.2],  # own caption c2 behind c0, c1: rank 3
            [0.4, 0.3, 0.9, 0.1],  # own caption c3 last: rank 4
        ],
        dtype=torch.float64,
    )
    image_emb, text_emb = from_scores(scores)
    result = retrieval_metrics(image_emb, text_emb, torch.tensor([0, 0, 1, 2]))
    assert set(result) == KEYS
    # i2t ranks [1, 3, 4]; t2i ranks (columns) [3, 1, 2, 3]
    assert result["i2t_r1"] == pytest.approx(1 / 3)
    assert result["i2t_r5"] == result["i2t_r10"] == 1.0
    assert result["i2t_medr"] == 3
    assert result["t2i_r1"] == pytest.approx(1 / 4)
    assert result["t2i_r5"] == result["t2i_r10"] == 1.0
    assert result["t2i_medr"] == 2  # floor of the mean of the middle ranks 2 and 3
    assert result["rsum"] == pytest.approx(100 * (1 / 3 + 1 + 1 + 1 / 4 + 1 + 1))


def test_perfect_embeddings():
    torch.manual_seed(0)
    image_emb = normalized(torch.randn(20, 16))
    text_to_image = torch.arange(20).repeat_interleave(5)
    result = retrieval_metrics(image_emb, image_emb[text_to_image], text_to_image)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
        assert result[key] == 1.0
    assert result["rsum"] == pytest.approx(600.0)
    assert result["i2t_medr"] == result["t2i_medr"] == 1


def test_only_third_caption_matches():
    torch.manual_seed(0)
    num_images, per_image = 12, 5
    text_to_image = torch.arange(num_images).repeat_interleave(per_image)
    scores = torch.rand(num_images, num_images * per_image, dtype=torch.float64) * 0.5
    for image in range(num_images):
        scores[image, text_to_image == image] = 0.9
    scores[0, [0, 1, 3, 4]] = -1.0  # image 0's other captions: its worst matches
    scores[0, 2] = 0.8
    image_emb, text_emb = from_scores(scores)
    result = retrieval_metrics(image_emb, text_emb, text_to_image)
    assert result["i2t_r1"] == 1.0  # the 3rd caption alone makes image 0 a hit

    scores[0, 10:16] = 0.85  # six captions of other images now beat it: rank 7
    image_emb, text_emb = from_scores(scores)
    result = retrieval_metrics(image_emb, text_emb, text_to_image)
    assert result["i2t_r1"] == result["i2t_r5"] == pytest.approx(11 / 12)
    assert result["i2t_r10"] == 1.0
    assert result["i2t_medr"] == 1


def test_ties_count_against_the_correct_item():
    # A collapsed model: every similarity equal. Pessimistic ties give the worst ranks.
    text_to_image = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    image_emb = torch.ones(4, 8) / math.sqrt(8)
    text_emb = torch.ones(8, 8) / math.sqrt(8)
    result = retrieval_metrics(image_emb, text_emb, text_to_image)
    assert result["i2t_medr"] == 7  # behind the 6 captions of other images
    assert result["t2i_medr"] == 4  # behind the 3 other images
    assert result["i2t_r1"] == result["t2i_r1"] == 0.0
    assert result["i2t_r5"] == 0.0 and result["t2i_r5"] == 1.0

    # One exact tie with a wrong caption: rank 2, whatever the caption order.
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.1, 0.2, 0.9]], dtype=torch.float64)
    for order in ([0, 1, 2], [1, 0, 2]):
        image_emb, text_emb = from_scores(scores[:, order])
        result = retrieval_metrics(image_emb, text_emb, torch.tensor([0, 1, 1])[order])
        assert result["i2t_r1"] == 0.5
        assert result["i2t_medr"] == 1  # ranks [2, 1]


def test_non_finite_embeddings_get_the_worst_ranks():
    text_to_image = torch.arange(6)
    image_emb = torch.eye(6)
    text_emb = torch.eye(6)
    image_emb[0] = float("nan")
    result = retrieval_metrics(image_emb, text_emb, text_to_image)
    assert result["i2t_r1"] == pytest.approx(5 / 6)
    assert result["t2i_r1"] == pytest.approx(5 / 6)
    assert result["i2t_r5"] == pytest.approx(5 / 6)  # image 0 ranks its caption 6th


def naive_ranks(scores: torch.Tensor, text_to_image: list[int]) -> tuple[list[int], list[int]]:
    """Per-query loop: sort with wrong items first among equals, find the first correct one."""
    num_images, num_texts = scores.shape
    i2t = []
    for image in range(num_images):
        order = sorted(
            range(num_texts),
            key=lambda j, image=image: (-scores[image, j].item(), text_to_image[j] == image),
        )
        i2t.append(1 + next(pos for pos, j in enumerate(order) if text_to_image[j] == image))
    t2i = []
    for text in range(num_texts):
        target = text_to_image[text]
        order = sorted(
            range(num_images), key=lambda i, text=text: (-scores[i, text].item(), i == target)
        )
        t2i.append(1 + order.index(target))
    return i2t, t2i


@pytest.mark.parametrize("chunk_elements", [1 << 24, 50])
def test_matches_naive_reference(monkeypatch, chunk_elements):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", chunk_elements)  # 50: many uneven chunks
    generator = torch.Generator().manual_seed(1)
    num_images = 37
    counts = torch.randint(1, 7, (num_images,), generator=generator)
    text_to_image = torch.arange(num_images).repeat_interleave(counts)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=generator)]
    image_emb = normalized(torch.randn(num_images, 4, generator=generator))
    text_emb = normalized(image_emb[text_to_image] + torch.randn(len(text_to_image), 4, generator=generator))
    result = retrieval_metrics(image_emb, text_emb, text_to_image)

    i2t, t2i = naive_ranks(image_emb @ text_emb.T, text_to_image.tolist())
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            assert result[f"{direction}_r{k}"] == pytest.approx(sum(r <= k for r in ranks) / len(ranks))
        assert result[f"{direction}_medr"] == math.floor(statistics.median(ranks))
    assert 0 < result["i2t_r1"] < result["i2t_r10"] < 1  # the data is neither trivial nor hopeless


def test_rejects_inconsistent_inputs():
    image_emb, text_emb = torch.eye(3), torch.eye(3)
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_metrics(image_emb, text_emb, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(image_emb, text_emb, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="shape"):
        retrieval_metrics(image_emb, text_emb, torch.tensor([0, 1]))
