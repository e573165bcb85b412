"""Splits: by image, disjoint, seeded, sizes, caps, split files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cliptune.config import DataConfig
from cliptune.data import DataWarning
from cliptune.data.splits import eval_split_size, split_images
from cliptune.errors import DataError

NAMES = [f"{i:04d}.jpg" for i in range(200)]


def _split(seed=0, source="shapes", names=NAMES, **config):
    return split_images(names, DataConfig(split_seed=seed, **config), source=source)


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



# ------------------------------------------------------- Karpathy's json and CLIP_benchmark's txt


def _karpathy_json(path, splits):
    images = [{"filename": name, "imgid": i, "split": split, "sentids": [5 * i],
               "sentences": [{"raw": "A dog .", "tokens": ["a", "dog"]}]}
              for i, (name, split) in enumerate(splits)]
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}), encoding="utf-8")
    return path


def test_karpathy_json_with_restval_as_train(tmp_path):
    listed = ([(n, "train") for n in NAMES[:120]] + [(n, "restval") for n in NAMES[120:160]]
              + [(n, "val") for n in NAMES[160:180]] + [(n, "test") for n in NAMES[180:]])
    path = _karpathy_json(tmp_path / "dataset_flickr30k.json", listed)
    splits = _split(split_file=str(path))
    assert splits["train"].tolist() == list(range(160))  # restval counts as train
    assert splits["val"].tolist() == list(range(160, 180))
    assert splits["test"].tolist() == list(range(180, 200))


def test_karpathy_names_match_images_in_a_subfolder(tmp_path):
    names = [f"flickr30k_images/{name}" for name in NAMES]
    listed = [(n, "train") for n in NAMES[:100]] + [(n, "val") for n in NAMES[100:150]]
    path = _karpathy_json(tmp_path / "k.json", listed + [(n, "test") for n in NAMES[150:]])
    assert _split(names=names, split_file=str(path))["test"].tolist() == list(range(150, 200))


def test_karpathy_json_reports_missing_images_and_bad_splits(tmp_path):
    listed = ([(n, "train") for n in NAMES[:100]] + [("404.jpg", "test"), ("405.jpg", "test")]
              + [(n, "val") for n in NAMES[100:150]] + [(n, "test") for n in NAMES[150:]])
    path = _karpathy_json(tmp_path / "k.json", listed)
    with pytest.warns(DataWarning, match=r"2 of 52 test images not in the dataset \(missing from "
                                          r"the image folder.*k.json.*404.jpg, 405.jpg"):
        assert len(_split(split_file=str(path))["test"]) == 50
    _karpathy_json(path, [(NAMES[0], "dev")])
    with pytest.raises(DataError, match="split 'dev'; expected one of train, restval, val, test"):
        _split(split_file=str(path))
    path.write_text(json.dumps({"images": [{"split": "train"}]}))
    with pytest.raises(DataError, match=r"images\[0\] has no filename"):
        _split(split_file=str(path))


def _karpathy_txt(folder, prefix="flickr30k", parts=((0, 150), (150, 170), (170, 200)), extra=()):
    folder.mkdir(exist_ok=True)
    for split, (a, b) in zip(("train", "val", "test"), parts, strict=True):
        lines = ["image,caption"]
        for name in NAMES[a:b]:
            lines += [f"{name},A man , in a hat , waves .", f"{name},Someone waves ."]
        if split == "test":
            lines += [f"{name},A photo ." for name in extra]
        (folder / f"{prefix}_{split}_karpathy.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("pick", ["train", "val", "test", "folder"])
def test_karpathy_txt_trio_from_any_file_or_the_folder(tmp_path, pick):
    folder = _karpathy_txt(tmp_path / "splits")
    path = folder if pick == "folder" else folder / f"flickr30k_{pick}_karpathy.txt"
    splits = _split(split_file=str(path))
    assert splits["train"].tolist() == list(range(150))
    assert splits["val"].tolist() == list(range(150, 170))
    assert splits["test"].tolist() == list(range(170, 200))  # 2 caption lines per image, once


def test_karpathy_txt_missing_names_and_files(tmp_path):
    folder = _karpathy_txt(tmp_path / "splits", extra=["gone.jpg"])
    with pytest.warns(DataWarning, match="1 of 31 test images not in the dataset.*gone.jpg"):
        _split(split_file=str(folder / "flickr30k_val_karpathy.txt"))
    (folder / "flickr30k_val_karpathy.txt").unlink()
    with pytest.raises(DataError, match="flickr30k_val_karpathy.txt.*side by side"):
        _split(split_file=str(folder / "flickr30k_test_karpathy.txt"))
    with pytest.raises(DataError, match="no files named \\*_val_karpathy.txt"):
        _split(split_file=str(folder))
    (tmp_path / "notes.txt").write_text("a.jpg,b\n")
    with pytest.raises(DataError, match="must say train, val or test"):
        _split(split_file=str(tmp_path / "notes.txt"))


def test_split_seed_decides_the_split_alone(tmp_path):
    assert all(np.array_equal(_split(seed=3)[k], _split(seed=3)[k]) for k in ("train", "test"))
    assert DataConfig().split_seed == 0
    # a split file's content decides membership whatever the seed
    path = _karpathy_json(tmp_path / "k.json", [(n, "train") for n in NAMES[:180]]
                          + [(n, "val") for n in NAMES[180:190]] + [(n, "test") for n in NAMES[190:]])
    assert np.array_equal(_split(seed=1, split_file=str(path))["test"],
                          _split(seed=2, split_file=str(path))["test"])
