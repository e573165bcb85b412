"""Splits: by image, disjoint, seeded, sizes, caps, split files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cliptune.config import DataConfig
from cliptune.data.issues import DataWarning
from cliptune.data.splits import eval_split_size, split_images
from cliptune.errors import DataError

NAMES = [f"{i:04d}.jpg" for i in range(200)]


def _split(seed=0, source="shapes", **config):
    return split_images(NAMES, DataConfig(**config), seed=seed, source=source)


def test_disjoint_cover_sorted_and_default_sizes():
    splits = _split()
    assert [len(splits[k]) for k in ("train", "val", "test")] == [160, 20, 20]
    together = np.concatenate(list(splits.values()))
    assert sorted(together.tolist()) == list(range(200))  # no image in two splits, none lost
    assert all((np.diff(s) > 0).all() for s in splits.values())


def test_same_seed_same_split_other_seed_other_split():
    first, again, other = _split(seed=1), _split(seed=1), _split(seed=2)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])


def test_sizes_as_counts_fractions_and_per_source_defaults():
    splits = _split(val_size=30, test_size=0.05)
    assert (len(splits["val"]), len(splits["test"])) == (30, 10)
    assert eval_split_size(None, 31783, "flickr30k") == 1000  # the usual 1K test
    assert eval_split_size(None, 200, "flickr30k") == 20  # a small copy: 10%
    assert eval_split_size(None, 6000, "shapes") == 600
    with pytest.raises(DataError, match="leave no training images"):
        _split(val_size=100, test_size=100)


def test_caps_take_a_subset_of_the_uncapped_split():
    full = _split(seed=5)
    capped = _split(seed=5, max_samples=50, max_eval_samples=7)
    assert [len(capped[k]) for k in ("train", "val", "test")] == [50, 7, 7]
    for name in full:
        assert set(capped[name]) <= set(full[name])
    assert all(np.array_equal(capped[k], _split(seed=5, max_samples=50, max_eval_samples=7)[k])
               for k in capped)


def test_split_file_overrides_the_random_split(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": NAMES[:150], "val": NAMES[150:170] + ["gone.jpg"],
                                "test": NAMES[170:]}), encoding="utf-8")
    with pytest.warns(DataWarning, match="1 of 21 val images not in the dataset.*gone.jpg"):
        splits = _split(split_file=str(path))
    assert splits["val"].tolist() == list(range(150, 170))
    assert splits["test"].tolist() == list(range(170, 200))
    with pytest.warns(DataWarning):
        assert len(_split(split_file=str(path), max_samples=10)["train"]) == 10


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"train": NAMES[:10], "val": NAMES[5:12], "test": NAMES[20:30]}, "in both train and val"),
        ({"train": NAMES[:10], "test": NAMES[20:30]}, "expected"),
    ],
)
def test_bad_split_files(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError, match=message):
        _split(split_file=str(path))


def test_split_file_with_an_empty_split(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": NAMES[:10], "val": ["x.jpg"], "test": NAMES[20:30]}))
    with pytest.warns(DataWarning), pytest.raises(DataError, match="val split has no images"):
        _split(split_file=str(path))


def test_split_file_missing_or_not_json(tmp_path):
    with pytest.raises(DataError, match="split file not found"):
        _split(split_file=str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        _split(split_file=str(tmp_path / "bad.json"))

