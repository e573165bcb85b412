"""Matplotlib figures of retrieval results, for TensorBoard's Images tab."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

SIMILARITY_BLOCK = 32  # images (and their first captions) the heat map shows


def retrieval_figure(
    images: np.ndarray,
    captions: list[str],
    caption_image: np.ndarray,
    similarity: torch.Tensor,
    image_indices: list[int],
    topk: int = 5,
):
    """Each chosen image beside its top-k retrieved captions; correct ones marked with a check.

    `images` is uint8 (N, H, W, 3); `similarity` is (len(image_indices), M): row r holds
    the scores of image `image_indices[r]` against every caption (see
    `figure_similarities`, which never builds the whole N x M matrix).
    """
    rows = len(image_indices)
    fig, axes = plt.subplots(rows, 2, figsize=(9, 2.2 * rows), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3]})
    for row, index in enumerate(image_indices):
        image_ax, text_ax = axes[row]
        image_ax.imshow(images[index])
        image_ax.axis("off")
        scores, order = similarity[row].topk(min(topk, similarity.shape[1]))
        lines = []
        for rank, (score, caption) in enumerate(zip(scores.tolist(), order.tolist(), strict=True)):
            mark = "\u2713" if caption_image[caption] == index else "\u2717"
            text = textwrap.shorten(captions[caption], width=70, placeholder="...")
            lines.append(f"{rank + 1}. {mark} {text} ({score:.2f})")
        text_ax.text(0, 0.5, "\n".join(lines), va="center", fontsize=8, family="monospace")
        text_ax.axis("off")
    fig.tight_layout()
    return fig


def figure_similarities(image_emb: torch.Tensor, text_emb: torch.Tensor, shown: list[int],
                        first_caption: torch.Tensor, size: int = SIMILARITY_BLOCK
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The similarities the two figures show, and only those (memory len(shown) x M, not
    N x M): the rows of the `shown` images against all M captions (`retrieval_figure`),
    and the top-left `size` x `size` block of images against the first caption of each
    (`similarity_figure`; `first_caption[i]` is image i's)."""
    rows = image_emb[shown] @ text_emb.T
    block = image_emb[:size] @ text_emb[first_caption[:size]].T
    return rows, block


def similarity_figure(similarity: torch.Tensor, size: int = SIMILARITY_BLOCK):
    """Heat map of the top-left `size` x `size` block of an image-by-caption similarity matrix."""
    block = similarity[:size, :size].float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    shown = ax.imshow(block, cmap="viridis")
    ax.set_xlabel("caption (first caption of each image)")
    ax.set_ylabel("image")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
