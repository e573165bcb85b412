"""Training augmentation: random resized crop and horizontal flip, batched, on any device.

Parameters are drawn on the host with a NumPy generator the caller owns (torchvision's
RandomResizedCrop recipe: area fraction in `scale`, log-uniform aspect ratio in `ratio`,
ten tries, then the whole image; then a fair coin per image for the flip), so torch's
and NumPy's global random state are never used and a batch is the same on every device.

They are applied to the whole batch by one `grid_sample` whose sampling grid holds each
image's own box, mirrored where flipped, wherever the batch lives (CPU or GPU). The grid
reproduces `torchvision.transforms.v2.functional.resized_crop` (bilinear, pixel centres,
edges clamped to the crop): a crop never exceeds the image it is resized back to, so
there is no downscaling and antialiasing would change nothing. Normalisation is applied
to the sampled chunk on the way out, so a batch is written once in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cliptune.data.image_cache import empty_batch

CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_TRIES = 10
# Pixels per grid_sample call on the CPU (4 images of 224 px): a chunk's float input, grid
# and output stay in cache, and glibc reuses their memory instead of mapping fresh pages.
CPU_CHUNK_PIXELS = 4 * 224 * 224


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


def draw_augmentation(rng: np.random.Generator, n: int, height: int, width: int, *,
                      flip: bool, scale: tuple[float, float] = CROP_SCALE,
                      ratio: tuple[float, float] = CROP_RATIO
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes int64 (n, 4) and flip flags bool (n,) for `n` images (no flips unless `flip`):
    area fractions in `scale`, aspect ratios (width / height) in `ratio`."""
    boxes = crop_boxes(rng, n, height, width, scale, ratio)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    return torch.from_numpy(boxes), torch.from_numpy(flips)


def _axis(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """grid_sample coordinates (n, size) that resize `[start, start + length)` to `size` samples
    along an axis of `extent` pixels (align_corners=False: -1 and 1 are the outer pixel edges)."""
    centres = torch.arange(size, device=start.device, dtype=torch.float32) + 0.5
    length = length.float().unsqueeze(1)
    source = (centres * (length / size) - 0.5).clamp(min=0).minimum(length - 1)
    return (2 * (source + start.float().unsqueeze(1)) + 1) / extent - 1


def _sample_grid(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """(n, H, W, 2) grid from per-image column (n, W) and row (n, H) coordinates."""
    return torch.stack(torch.broadcast_tensors(xs.unsqueeze(1), ys.unsqueeze(2)), dim=-1)


def augment_images(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                   finish: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """Crop each image of a (B, 3, H, W) batch (uint8 or float) to its box `(top, left,
    height, width)`, resize it back to (H, W) bilinearly and mirror it where `flips`.

    Returns float32 (B, 3, H, W), passed through `finish(chunk, out=...)` (e.g.
    `normalize_images`) when given. `boxes` and `flips` may live on the host.
    """
    n, _, height, width = images.shape
    boxes, flips = boxes.to(images.device), flips.to(images.device)
    top, left, h, w = boxes.unbind(1)
    xs = _axis(left, w, width, width)
    xs = torch.where(flips.unsqueeze(1), xs.flip(1), xs)
    ys = _axis(top, h, height, height)
    out = empty_batch((n, 3, height, width), torch.float32, images.device)
    chunk = max(1, CPU_CHUNK_PIXELS // (height * width)) if images.device.type == "cpu" else max(n, 1)
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        sampled = F.grid_sample(images[part].float(), _sample_grid(xs[part], ys[part]),
                                mode="bilinear", padding_mode="border", align_corners=False)
        if finish is None:
            out[part] = sampled
        else:
            finish(sampled, out=out[part])
    return out
