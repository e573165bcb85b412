"""TrainLoader (epoch plans, host batches, workers, data-parallel shards), device_batches,
eval_batches and normalisation."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch

from cliptune.data import Split, TrainLoader, device_batches, eval_batches, normalize_images
from cliptune.data.loader import default_num_workers
from cliptune.data.preprocess import CLIP_MEAN, CLIP_STD
from cliptune.errors import DataError


def _loader(split, **kwargs):
    options = {"batch_size": 16, "seed": 0, "epoch": 1, "augment": True, "flip": False}
    return TrainLoader(split, **{**options, **kwargs})


def _image_of(split, images):
    """Row index in the split of each image of a uint8 (B, 3, H, W) batch (exact match)."""
    flat = torch.from_numpy(np.asarray(split.images)).permute(0, 3, 1, 2).flatten(1)
    return [int((flat == image.flatten()).all(1).nonzero()[0]) for image in images]


def _same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            assert (x is None and y is None) or torch.equal(x, y)


def test_one_caption_per_image_batches(shapes_data):
    split = shapes_data.train
    loader = _loader(split, augment=False)
    assert len(loader) == len(split) // 16 == 3
    seen = []
    for batch in loader:
        images, tokens = batch.images, batch.tokens
        assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8
        assert tokens.shape == (16, 16) and tokens.dtype == torch.int64
        assert batch.boxes is None and batch.flips is None
        rows = _image_of(split, images)
        assert len(set(rows)) == 16  # no image twice in a batch
        for row, token_row in zip(rows, tokens, strict=True):  # each caption is one of its image's
            mine = split.tokens[torch.from_numpy(np.flatnonzero(split.caption_image == row))]
            assert (mine == token_row).all(1).any()
        seen += rows
    assert len(set(seen)) == 48  # every image once per epoch


def test_device_batches_normalised_and_augmented(shapes_data):
    plain = list(device_batches(_loader(shapes_data.train, augment=False), torch.device("cpu")))
    host = list(_loader(shapes_data.train, augment=False))
    for (images, tokens), batch in zip(plain, host, strict=True):
        assert images.dtype == torch.float32 and images.shape == (16, 3, 32, 32)
        torch.testing.assert_close(images, normalize_images(batch.images))
        assert torch.equal(tokens, batch.tokens)
    augmented = list(device_batches(_loader(shapes_data.train, flip=True), "cpu"))
    assert [t.shape for t in augmented[0]] == [t.shape for t in plain[0]]
    assert not torch.allclose(augmented[0][0], plain[0][0])
    assert torch.equal(augmented[0][1], plain[0][1])  # augmentation leaves the captions alone


def test_same_seed_and_epoch_same_batches_without_touching_global_rng(shapes_data):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    first = list(device_batches(_loader(shapes_data.train, flip=True), "cpu"))
    again = list(device_batches(_loader(shapes_data.train, flip=True), "cpu"))
    other = list(device_batches(_loader(shapes_data.train, flip=True, epoch=2), "cpu"))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    _same(first, again)
    assert not torch.equal(first[0][0], other[0][0])


def test_a_batch_does_not_depend_on_the_batches_before_it(shapes_data):
    """Resuming mid-epoch: batch k read alone equals batch k of a full pass."""
    full = list(_loader(shapes_data.train, flip=True))
    alone = _loader(shapes_data.train, flip=True).batch(2)
    _same([full[2]], [alone])


def test_worker_processes_give_the_same_batches(shapes_data):
    inline = list(_loader(shapes_data.train, flip=True))
    workers = list(_loader(shapes_data.train, flip=True, num_workers=1))
    _same(inline, workers)


@pytest.mark.parametrize("all_captions", [False, True])
def test_persistent_workers_give_each_epochs_batches_and_stay_up(shapes_data, all_captions):
    """One loader over epochs 1-3 with 2 reader processes: each epoch's batches are those
    of a fresh single-process loader of that epoch, the same processes serve them, and
    starting them leaves torch's global generator alone (dropout draws from it)."""
    loader = _loader(shapes_data.train, flip=True, num_workers=2, all_captions=all_captions)
    readers, torch_state = [], torch.get_rng_state()
    others = {child.pid for child in mp.active_children()}  # children of earlier tests
    try:
        for epoch in (1, 2, 3):
            loader.set_epoch(epoch)
            got = list(loader)
            _same(got, list(_loader(shapes_data.train, flip=True, epoch=epoch,
                                    all_captions=all_captions)))
            readers.append({child.pid for child in mp.active_children()} - others)
    finally:
        loader.close()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert not readers[0] & {child.pid for child in mp.active_children()}  # close ended them
    assert len(readers[0]) == 2 and readers[0] == readers[1] == readers[2]
    assert not torch.equal(got[0].tokens, list(_loader(shapes_data.train, flip=True,
                                                       all_captions=all_captions))[0].tokens)


def test_auto_workers_per_device(shapes_data):
    assert _loader(shapes_data.train, num_workers="auto").num_workers == 0  # no GPU here
    assert default_num_workers(pin_memory=False) == 0
    assert 1 <= default_num_workers(pin_memory=True) <= 4
    assert default_num_workers(pin_memory=True, world_size=64) == 1


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("all_captions", [False, True])
def test_ranks_together_give_the_single_process_batch(shapes_data, world_size, all_captions):
    options = {"flip": True, "all_captions": all_captions}
    whole = list(device_batches(_loader(shapes_data.train, **options), "cpu"))
    shards = [list(device_batches(_loader(shapes_data.train, rank=rank, world_size=world_size,
                                          **options), "cpu"))
              for rank in range(world_size)]
    assert all(len(shard) == len(whole) for shard in shards)
    for index, (images, tokens) in enumerate(whole):
        parts = [shard[index] for shard in shards]
        assert all(part[0].shape[0] == 16 // world_size for part in parts)
        assert torch.equal(torch.cat([part[0] for part in parts]), images)
        assert torch.equal(torch.cat([part[1] for part in parts]), tokens)


def test_global_batch_must_divide_among_ranks(shapes_data):
    with pytest.raises(DataError, match="batch_size=16 .* among 3 processes"):
        _loader(shapes_data.train, world_size=3)
    with pytest.raises(DataError, match="rank 2"):
        _loader(shapes_data.train, rank=2, world_size=2)


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


def test_loader_passes_its_crop_scale(shapes_data):
    def first(**options):
        return next(device_batches(_loader(shapes_data.train, **options), "cpu"))[0]

    # A full-area crop of a square image is the whole image: the identity up to float rounding.
    torch.testing.assert_close(first(crop_scale=(1.0, 1.0)), first(augment=False))
    assert not torch.allclose(first(), first(augment=False), atol=0.1)
    boxes = _loader(shapes_data.train, crop_scale=(0.9, 1.0)).batch(0).boxes
    assert (boxes[:, 2] * boxes[:, 3] >= 0.85 * 32 * 32).all()


def test_loader_passes_its_crop_ratio(shapes_data):
    square = _loader(shapes_data.train, crop_ratio=(1.0, 1.0)).batch(0).boxes
    assert (square[:, 2] - square[:, 3]).abs().max() <= 1  # width / height 1, up to rounding
    wide = _loader(shapes_data.train, crop_ratio=(2.0, 2.5), crop_scale=(0.25, 0.35)).batch(0).boxes
    assert (wide[:, 3] >= 1.8 * wide[:, 2]).all()


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
    torch.testing.assert_close(normalize_images(images.float()), out)  # float 0-255 input too
    target = torch.empty(2, 3, 2, 2)
    assert normalize_images(images, out=target) is target and torch.equal(target, out)


def test_normalisation_constants_are_made_once_per_device(monkeypatch):
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    normalize_images(images)
    made = []
    original = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or original(*a, **k))
    for _ in range(3):
        normalize_images(images)
    assert made == []  # no new constant tensor per call


def test_num_workers_config_values():
    from cliptune.config import RunConfig, set_value, validate
    from cliptune.errors import ConfigError

    config = RunConfig()
    assert config.data.num_workers == "auto"
    set_value(config, "data.num_workers", 2)
    validate(config)
    for bad in ("many", -1):
        set_value(config, "data.num_workers", bad)
        with pytest.raises(ConfigError, match="data.num_workers must be auto or an integer"):
            validate(config)
