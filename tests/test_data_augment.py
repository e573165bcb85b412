"""Batched random resized crop + flip: the per-image torchvision result, drawn reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cliptune.data import TrainLoader, normalize_images
from cliptune.data.augment import CPU_CHUNK_PIXELS, augment_images, crop_boxes, draw_augmentation


def _reference(images, boxes, flips, dtype=None):
    """torchvision's resized_crop (+ horizontal_flip) image by image."""
    height, width = images.shape[-2:]
    out = []
    for image, box, flip in zip(images, boxes.tolist(), flips.tolist(), strict=True):
        image = image if dtype is None else image.to(dtype)
        crop = TF.resized_crop(image, *box, [height, width], antialias=True)
        out.append(TF.horizontal_flip(crop) if flip else crop)
    return torch.stack(out)


@pytest.mark.parametrize("shape", [(24, 24), (20, 36)])
def test_batched_crop_and_flip_equal_the_per_image_reference(shape):
    n = 2 * CPU_CHUNK_PIXELS // (shape[0] * shape[1]) + 5  # several chunks and a short last one
    images = torch.randint(0, 256, (n, 3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    boxes, flips = draw_augmentation(np.random.default_rng(1), n, *shape, flip=True, scale=(0.08, 1.0))
    assert flips.any() and not flips.all()
    out = augment_images(images, boxes, flips)
    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out, _reference(images, boxes, flips, torch.float32), atol=2e-3, rtol=0)
    # torchvision's uint8 kernel rounds to whole levels
    assert (out - _reference(images, boxes, flips).float()).abs().max() <= 1.01
    normalised = augment_images(images, boxes, flips, normalize_images)
    torch.testing.assert_close(normalised, normalize_images(out))


def test_works_on_a_channels_last_view_of_the_cache_layout():
    cache = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    images = cache.permute(0, 3, 1, 2)  # what the loader hands over: no copy
    boxes, flips = draw_augmentation(np.random.default_rng(0), 4, 16, 16, flip=True)
    torch.testing.assert_close(augment_images(images, boxes, flips),
                               augment_images(images.contiguous(), boxes, flips))


def test_flip_only_when_allowed():
    images = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    images[:, 0, :, :8] = 255  # red left half, blue right half
    images[:, 2, :, 8:] = 255
    boxes, flips = draw_augmentation(np.random.default_rng(1), 64, 16, 16, flip=False)
    assert not flips.any()
    kept = augment_images(images, boxes, flips)
    assert (kept[:, 0, :, 0] > 200).all()  # crops keep at least 0.6 of the width: left stays red
    boxes, flips = draw_augmentation(np.random.default_rng(1), 64, 16, 16, flip=True)
    flipped = augment_images(images, boxes, flips)
    left_blue = flipped[:, 2, 8, 0] > 200
    assert torch.equal(left_blue, flips) and 10 < flips.sum() < 54


def test_crop_boxes_inside_the_image_with_the_asked_area():
    boxes = crop_boxes(np.random.default_rng(0), 500, 32, 40)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 40).all()
    area = h * w / (32 * 40)
    assert area.min() > 0.45 and area.max() <= 1.0


def test_crop_scale_bounds_the_area_kept():
    boxes = crop_boxes(np.random.default_rng(0), 500, 32, 32, scale=(0.9, 1.0))
    area = boxes[:, 2] * boxes[:, 3] / 32**2
    assert area.min() > 0.85


def test_parameters_are_fixed_by_seed_epoch_and_batch(shapes_data):
    def params(seed=0, epoch=1, index=0):
        batch = TrainLoader(shapes_data.train, batch_size=16, seed=seed, epoch=epoch,
                            augment=True, flip=True).batch(index)
        return torch.cat([batch.boxes, batch.flips[:, None].long()], 1)

    assert torch.equal(params(), params())
    assert not torch.equal(params(), params(index=1))
    assert not torch.equal(params(), params(epoch=2))
    assert not torch.equal(params(), params(seed=1))
