"""ImageRows: splits as views of the image cache file, read on access, out of the process's RSS."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cliptune.data.image_cache import ImageRows, read_images
from cliptune.errors import DataError


def _cache(path, n=10, size=4):
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    images[:] = np.arange(n, dtype=np.uint8)[:, None, None, None] * 10
    images[:, 0, 0, 0] = np.arange(n)
    images.flush()
    return np.load(path)


def test_rows_read_like_an_array(tmp_path):
    full = _cache(tmp_path / "c.npy")
    view = ImageRows(tmp_path / "c.npy").subset(np.array([7, 2, 3, 4, 9]))
    expected = full[[7, 2, 3, 4, 9]]
    assert len(view) == 5 and view.shape == (5, 4, 4, 3) and view.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(view), expected)
    np.testing.assert_array_equal(view[1], expected[1])
    np.testing.assert_array_equal(view[-1], expected[-1])
    np.testing.assert_array_equal(view[1:4], expected[1:4])  # one read for rows 2, 3, 4
    np.testing.assert_array_equal(view[np.array([4, 0])], expected[[4, 0]])
    np.testing.assert_array_equal(view.subset(np.array([0, 2]))[np.array([1])], expected[[2]])
    out = np.empty((2, 4, 4, 3), np.uint8)
    assert view.read(np.array([3, 1]), out=out) is out
    np.testing.assert_array_equal(out, expected[[3, 1]])
    np.testing.assert_array_equal(read_images(expected, np.array([3, 1])), expected[[3, 1]])
    np.testing.assert_array_equal(read_images(view, np.array([3, 1])), expected[[3, 1]])


def test_pickles_as_path_and_rows(tmp_path):
    _cache(tmp_path / "c.npy", n=200, size=16)
    view = ImageRows(tmp_path / "c.npy").subset(np.arange(0, 200, 2))
    payload = pickle.dumps(view)
    assert len(payload) < 4096  # not the 150 KB of pixels
    np.testing.assert_array_equal(np.asarray(pickle.loads(payload)), np.asarray(view))


def test_truncated_or_foreign_files_are_clear_errors(tmp_path):
    _cache(tmp_path / "c.npy")
    view = ImageRows(tmp_path / "c.npy")
    data = (tmp_path / "c.npy").read_bytes()
    (tmp_path / "c.npy").write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated; delete it"):
        view[9]
    np.save(tmp_path / "floats.npy", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match="not an image cache"):
        ImageRows(tmp_path / "floats.npy")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def test_splits_and_epochs_do_not_grow_memory_by_the_split(tmp_path):
    """A 120 MB cache: making a split of 100 MB and reading all of it batch by batch (an epoch)
    leaves the process's RSS within a few MB (the pages stay in the shared page cache)."""
    n, size = 2500, 128
    images = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8,
                                       shape=(n, size, size, 3))
    images[:] = 7
    images.flush()
    del images
    split_bytes = 2000 * size * size * 3
    rows = np.random.default_rng(0).permutation(n)[:2000]
    buffer = np.empty((64, size, size, 3), np.uint8)
    before = _rss()
    split = ImageRows(tmp_path / "big.npy").subset(rows)
    made = _rss() - before
    for start in range(0, len(split), 64):
        batch = np.sort(np.arange(start, min(start + 64, len(split))))
        split.read(batch, out=buffer[:len(batch)])
    read_all = _rss() - before
    assert made < 0.02 * split_bytes
    assert read_all < 0.1 * split_bytes, f"RSS grew by {read_all / 2**20:.0f} MB"
    assert (buffer == 7).all()
