"""The retrieval figures' similarities without the whole N x M matrix: exactly the rows
and block the full matrix would give, and figures that mark the right captions."""

from __future__ import annotations

import numpy as np
import torch

from cliptune.figures import figure_similarities, retrieval_figure, similarity_figure


def integer_embeddings(n_images: int, n_captions: int):
    """Small-integer embeddings: every dot product is exact in float32, in any order of
    summation, so a row computed alone must equal the full matrix's row bit for bit."""
    g = torch.Generator().manual_seed(3)
    image_emb = torch.randint(-3, 4, (n_images, 8), generator=g).float()
    text_emb = torch.randint(-3, 4, (n_captions, 8), generator=g).float()
    caption_image = torch.arange(n_captions) % n_images
    return image_emb, text_emb, caption_image


def test_rows_and_block_equal_those_of_the_full_matrix():
    image_emb, text_emb, caption_image = integer_embeddings(50, 130)
    first = torch.arange(50)  # caption i (i < 50) is image i's first
    shown = [0, 17, 49]
    rows, block = figure_similarities(image_emb, text_emb, shown, first, size=32)
    full = image_emb @ text_emb.T
    assert rows.shape == (3, 130) and block.shape == (32, 32)  # 32 < 50 images
    assert torch.equal(rows, full[shown])
    assert torch.equal(block, full[:, first][:32, :32])


def test_retrieval_figure_marks_each_shown_images_own_captions():
    image_emb = torch.eye(6)
    caption_image = np.array([0, 1, 2, 3, 4, 5, 2, 4])
    text_emb = image_emb[caption_image]
    shown = [2, 4]
    rows, block = figure_similarities(image_emb, text_emb, shown, torch.arange(6))
    images = np.zeros((6, 8, 8, 3), dtype=np.uint8)
    captions = [f"caption {i}" for i in range(8)]
    figure = retrieval_figure(images, captions, caption_image, rows, shown, topk=2)
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert texts == ["1. \u2713 caption 2 (1.00)\n2. \u2713 caption 6 (1.00)",
                     "1. \u2713 caption 4 (1.00)\n2. \u2713 caption 7 (1.00)"]
    assert similarity_figure(block).axes[0].images[0].get_array().shape == (6, 6)
