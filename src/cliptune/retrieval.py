"""Queries against a trained model: captions for an image, images for a text, and
zero-shot classification from class names.

Scores are cosine similarities; probabilities are what the model was trained with: the
softmax over all candidates of the similarities times the model's logit scale, or for a
SigLIP model the sigmoid of each scaled similarity plus its logit bias (one independent
match probability per candidate, so they need not sum to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cliptune.checkpoint import LoadedModel
from cliptune.data.preprocess import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    decode_image,
    normalize_images,
)
from cliptune.errors import CliptuneError

BATCH_SIZE = 256  # images or texts encoded at once: bounds the memory for any number
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of the {}.",
    "a drawing of a {}.",
)


@dataclass(frozen=True)
class Match:
    """One ranked candidate: a caption, an image path or a class name."""

    label: str
    score: float  # cosine similarity
    probability: float  # softmax over all candidates at the model's logit scale (SigLIP: sigmoid)


def load_image(path: str | Path, image_size: int) -> Tensor:
    """Read an image as uint8 (3, S, S) with the data pipeline's recipe
    (`cliptune.data.preprocess`: shorter side to S, centre crop)."""
    path = Path(path)
    if not path.is_file():
        raise CliptuneError(f"image not found: {path}")
    try:
        pixels = decode_image(path, image_size)
    except DECODE_ERRORS as err:
        raise CliptuneError(f"{path} is not a readable image ({err})") from None
    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-blank, stripped lines of a UTF-8 text file; `what` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise CliptuneError(f"{what} file not found: {path}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise CliptuneError(f"{what} file {path} is not UTF-8 text") from None
    lines = [line for line in lines if line]
    if not lines:
        raise CliptuneError(f"{what} file {path} is empty; put one entry per line")
    return lines


def split_list(text: str, flag: str) -> list[str]:
    """Comma-separated values of a flag such as `--prompts "a dog,a cat"`."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise CliptuneError(f"{flag} is empty; give comma-separated values, e.g. {flag} \"a,b\"")
    return items


def find_images(directory: str | Path) -> list[Path]:
    """Image files directly inside `directory`, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CliptuneError(f"image folder not found: {directory}")
    paths = sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower()[1:] in IMAGE_EXTENSIONS
    )
    if not paths:
        raise CliptuneError(
            f"no images in {directory} (looked for "
            f"{', '.join('.' + ext for ext in IMAGE_EXTENSIONS)})"
        )
    return paths


@torch.no_grad()
def embed_images(loaded: LoadedModel, paths: Sequence[Path],
                 batch_size: int = BATCH_SIZE) -> Tensor:
    """(N, D) embeddings of the image files at `paths`, `batch_size` images at a time."""
    device = _device(loaded)
    image_size = loaded.config.model.image_size
    batches = []
    for start in range(0, len(paths), batch_size):
        images = torch.stack([load_image(p, image_size) for p in paths[start : start + batch_size]])
        batches.append(loaded.model.encode_image(normalize_images(images.to(device))).float())
    return torch.cat(batches)


@torch.no_grad()
def embed_texts(loaded: LoadedModel, texts: Sequence[str],
                batch_size: int = BATCH_SIZE) -> Tensor:
    """(M, D) embeddings of `texts`, `batch_size` texts at a time."""
    device = _device(loaded)
    return torch.cat([
        loaded.model.encode_text(
            loaded.tokenizer.encode(list(texts[start : start + batch_size])).to(device)
        ).float()
        for start in range(0, len(texts), batch_size)
    ])


def rank_captions(
    loaded: LoadedModel, image_path: str | Path, captions: Sequence[str], *, topk: int = 5,
    batch_size: int = BATCH_SIZE,
) -> list[Match]:
    """The `topk` captions that best describe the image, best first (captions encoded
    `batch_size` at a time)."""
    query = embed_images(loaded, [Path(image_path)])[0]
    candidates = embed_texts(loaded, captions, batch_size)
    return _rank(loaded, query, candidates, list(captions), topk)


def rank_images(
    loaded: LoadedModel, text: str, image_dir: str | Path, *, topk: int = 5,
    batch_size: int = BATCH_SIZE,
) -> list[Match]:
    """The `topk` images of `image_dir` that best match `text`, best first (images encoded
    `batch_size` at a time)."""
    if not text.strip():
        raise CliptuneError("--text is empty; give the text to search images for")
    paths = find_images(image_dir)
    query = embed_texts(loaded, [text])[0]
    candidates = embed_images(loaded, paths, batch_size)
    return _rank(loaded, query, candidates, [str(p) for p in paths], topk)


def classify(
    loaded: LoadedModel,
    image_path: str | Path,
    classes: Sequence[str],
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    topk: int = 5,
) -> list[Match]:
    """Zero-shot classification: each class is the re-normalised mean embedding of its
    name in every prompt template (each holding `{}`); best `topk` classes first."""
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise CliptuneError(f"prompt template {bad[0]!r} has no {{}} for the class name")
    class_embeddings = torch.stack([
        torch.nn.functional.normalize(
            embed_texts(loaded, [t.format(name) for t in templates]).mean(dim=0), dim=0
        )
        for name in classes
    ])
    query = embed_images(loaded, [Path(image_path)])[0]
    return _rank(loaded, query, class_embeddings, list(classes), topk)


def _device(loaded: LoadedModel) -> torch.device:
    return next(loaded.model.parameters()).device


def _rank(
    loaded: LoadedModel, query: Tensor, candidates: Tensor, labels: list[str], topk: int
) -> list[Match]:
    if topk < 1:
        raise CliptuneError(f"--topk must be at least 1, got {topk}")
    scores = candidates @ query
    logits = loaded.model.logit_scale.exp().float() * scores
    if loaded.model.logit_bias is None:
        probabilities = torch.softmax(logits, dim=0)
    else:
        probabilities = torch.sigmoid(logits + loaded.model.logit_bias.float())
    order = torch.sort(scores, descending=True, stable=True).indices[:topk]
    return [
        Match(labels[i], scores[i].item(), probabilities[i].item()) for i in order.tolist()
    ]
