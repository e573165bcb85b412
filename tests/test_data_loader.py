"""TrainLoader, eval_batches, augmentation and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cliptune.data import Split, TrainLoader, eval_batches, normalize_images
from cliptune.data.augment import augment_batch, crop_boxes
from cliptune.data.loader import CLIP_MEAN, CLIP_STD
from cliptune.errors import DataError


def _loader(split, **kwargs):
    options = {"batch_size": 16, "seed": 0, "epoch": 1, "augment": True, "flip": False}
    return TrainLoader(split, **{**options, **kwargs})


def _image_of(split, images):
    """Row index in the split of each image of a uint8 (B, 3, H, W) batch (exact match)."""
    flat = torch.from_numpy(np.asarray(split.images)).permute(0, 3, 1, 2).flatten(1)
    return [int((flat == image.flatten()).all(1).nonzero()[0]) for image in images]


def test_one_caption_per_image_batches(shapes_data):
    split = shapes_data.train
    loader = _loader(split, augment=False)
    assert len(loader) == len(split) // 16 == 3
    seen = []
    for images, tokens in loader:
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
        assert tokens.shape == (16, 16) and tokens.dtype == torch.int64
        rows = _image_of(split, images)
        assert len(set(rows)) == 16  # no image twice in a batch
        for row, token_row in zip(rows, tokens, strict=True):  # each caption is one of its image's
            mine = split.tokens[torch.from_numpy(np.flatnonzero(split.caption_image == row))]
            assert (mine == token_row).all(1).any()
        seen += rows
    assert len(set(seen)) == 48  # every image once per epoch


def test_same_seed_and_epoch_same_batches_without_touching_global_rng(shapes_data):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = list(_loader(shapes_data.train, flip=True))
    again = list(_loader(shapes_data.train, flip=True))
    other = list(_loader(shapes_data.train, flip=True, epoch=2))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    for (a, ta), (b, tb) in zip(first, again, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(first[0][0], other[0][0])


def test_worker_processes_give_the_same_batches(shapes_data):
    inline = list(_loader(shapes_data.train, flip=True))
    workers = list(_loader(shapes_data.train, flip=True, num_workers=1))
    assert len(inline) == len(workers)
    for (a, ta), (b, tb) in zip(inline, workers, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_all_captions_every_pair_once_and_distinct_images(shapes_data):
    split = shapes_data.train
    loader = _loader(split, all_captions=True, augment=False)
    n_captions = len(split.captions)
    assert len(loader) == n_captions // 16
    pairs = set()
    for index in range(len(loader)):
        captions = loader._batches[index]
        images = split.caption_image[captions]
        assert len(set(images.tolist())) == 16
        pairs.update(captions.tolist())
    assert len(pairs) == len(loader) * 16  # no pair twice
    assert n_captions - len(pairs) < 16  # only the last incomplete batch is dropped


def test_all_captions_with_uneven_caption_counts():
    counts = np.array([1, 7, 2, 5, 1, 3, 9, 2, 4, 1] * 3)
    caption_image = np.repeat(np.arange(len(counts)), counts)
    split = Split("train", [f"{i}.jpg" for i in range(len(counts))],
                  np.zeros((len(counts), 4, 4, 3), np.uint8), [""] * len(caption_image),
                  caption_image, torch.zeros(len(caption_image), 3, dtype=torch.int64))
    for epoch in range(3):
        loader = _loader(split, batch_size=8, all_captions=True, epoch=epoch)
        used = np.concatenate(loader._batches)
        assert len(set(used.tolist())) == len(used)
        assert all(len(set(caption_image[b].tolist())) == 8 for b in loader._batches)
        assert len(used) >= 0.8 * len(caption_image)


def test_batch_size_must_fit_the_split(shapes_data):
    with pytest.raises(DataError, match="batch size 100"):
        _loader(shapes_data.train, batch_size=100)


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


def test_loader_passes_its_crop_scale(shapes_data):
    gentle = _loader(shapes_data.train, crop_scale=(1.0, 1.0), flip=False)
    plain = _loader(shapes_data.train, augment=False)
    strong = _loader(shapes_data.train)
    # A full-area crop with a square aspect is the identity, up to resampling: identical here.
    assert torch.equal(gentle.batch(0)[0], plain.batch(0)[0])
    assert not torch.equal(strong.batch(0)[0], plain.batch(0)[0])


def test_flip_only_when_allowed():
    images = torch.zeros(64, 3, 16, 16, dtype=torch.uint8)
    images[:, 0, :, :8] = 255  # red left half, blue right half
    images[:, 2, :, 8:] = 255
    kept = augment_batch(images, np.random.default_rng(1), flip=False)
    assert (kept[:, 0, :, 0] > 200).all()  # crops keep at least 0.6 of the width: left stays red
    flipped = augment_batch(images, np.random.default_rng(1), flip=True)
    left_blue = (flipped[:, 2, 8, 0] > 200).sum()
    assert 10 < left_blue < 54


def test_eval_batches_in_order(shapes_data):
    split = shapes_data.val
    batches = list(eval_batches(split, 4))
    assert [len(b) for b in batches] == [4, 2]
    joined = torch.cat(batches).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(joined, np.asarray(split.images))


def test_normalize_images():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize_images(images)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    mean, std = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 0, 0], (1 - mean) / std)
