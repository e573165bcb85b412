"""Training augmentation on uint8 image batches: random resized crop and optional flip.

Crop boxes are drawn with a NumPy generator the caller owns (torchvision's RandomResizedCrop
recipe: area fraction in `scale`, log-uniform aspect ratio in `ratio`, ten tries, then
the whole image), and applied with `torchvision.transforms.v2.functional`, so torch's
and NumPy's global random state are never used.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_TRIES = 10


def crop_boxes(rng: np.random.Generator, n: int, height: int, width: int,
               scale: tuple[float, float] = CROP_SCALE,
               ratio: tuple[float, float] = CROP_RATIO) -> np.ndarray:
    """int64 (n, 4) boxes `(top, left, height, width)` inside a `height` x `width` image."""
    area = height * width * rng.uniform(*scale, size=(n, _TRIES))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(n, _TRIES)))
    widths = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    heights = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    h = np.where(fits.any(axis=1), heights[rows, first], height)
    w = np.where(fits.any(axis=1), widths[rows, first], width)
    top = np.floor(rng.random(n) * (height - h + 1)).astype(np.int64)
    left = np.floor(rng.random(n) * (width - w + 1)).astype(np.int64)
    return np.stack([top, left, h, w], axis=1)


def augment_batch(images: torch.Tensor, rng: np.random.Generator, *, flip: bool,
                  scale: tuple[float, float] = CROP_SCALE) -> torch.Tensor:
    """Random resized crop (area fraction in `scale`) of each uint8 (B, 3, H, W) image back
    to (H, W); flip half of them if `flip`."""
    n, _, height, width = images.shape
    boxes = crop_boxes(rng, n, height, width, scale)
    out = torch.empty((n, 3, height, width), dtype=images.dtype)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        out[k] = TF.resized_crop(images[k], top, left, h, w, [height, width], antialias=True)
    if flip:
        mirrored = torch.from_numpy(np.flatnonzero(rng.random(n) < 0.5))
        out.index_copy_(0, mirrored, TF.horizontal_flip(out.index_select(0, mirrored)))
    return out
