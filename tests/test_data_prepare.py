"""prepare_data end to end: sources (auto included), splits, cache reuse, tokenizer, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import FLICKR_HANDLE, SHAPES_SMALL, write_jpeg

from cliptune.config import DataConfig
from cliptune.data import DataWarning, prepare_data
from cliptune.data.image_cache import ImageRows
from cliptune.data.preprocess import decode_image
from cliptune.errors import ConfigError, DataError
from cliptune.tokenizer import Tokenizer


def _prepare(config, **kwargs):
    return prepare_data(config, **{"quiet": True, **SHAPES_SMALL, **kwargs})


def _folder(tmp_path, n=20, words=None):
    """A captions.txt folder of `n` JPEGs, two captions each."""
    folder = tmp_path / "folder"
    lines = ["image,caption"]
    for i in range(n):
        write_jpeg(folder / f"{i:03d}.jpg", seed=i)
        word = (words or {}).get(i, "dog")
        lines += [f"{i:03d}.jpg,a {word} number {i} .", f"{i:03d}.jpg,another {word} , photo {i}"]
    (folder / "captions.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def test_shapes_end_to_end(shapes_data, shapes_cache_dir):
    data = shapes_data
    assert data.source == "shapes" and data.flip_safe is False and data.image_size == 32
    assert data.crop_scale == (0.9, 1.0)  # gentle crops: captions state positions and sizes
    assert [len(data.split(k)) for k in ("train", "val", "test")] == [48, 6, 6]
    names = [set(data.split(k).image_names) for k in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for split in (data.train, data.val, data.test):
        assert split.images.shape == (len(split), 32, 32, 3) and split.images.dtype == np.uint8
        assert split.tokens.shape == (len(split.captions), 16) and split.tokens.dtype == torch.int64
        assert len(split.captions) == 5 * len(split)
        assert split.caption_image.min() == 0 and split.caption_image.max() == len(split) - 1
        assert (split.first_caption_index() == np.arange(len(split)) * 5).all()
    row = data.test.image_names[3]
    np.testing.assert_array_equal(data.test.images[3], decode_image(f"{data.root}/{row}", 32))
    caption = data.test.captions[int(data.test.first_caption_index()[3])]
    decoded = data.tokenizer.decode(data.test.tokens[15])  # truncated at 16 tokens
    assert len(decoded) > 10 and caption.lower().startswith(decoded)
    with pytest.raises(DataError, match="unknown split"):
        data.split("dev")


def test_same_split_seed_same_data_and_cache_reused(shapes_cache_dir, capsys):
    config = DataConfig(source="shapes", shapes_images=60, cache_dir=str(shapes_cache_dir))
    first = _prepare(config, quiet=False)
    second = _prepare(config, quiet=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert "60 images, 300 captions; split train 48 / val 6 / test 6 images" in lines[-1]
    assert lines[-1].endswith("32px image cache reused")
    assert first.test.image_names == second.test.image_names
    assert first.tokenizer.to_json() == second.tokenizer.to_json()
    assert isinstance(first.train.images, ImageRows)  # a view of the cache, nothing loaded
    assert first.train.images.path == second.train.images.path
    other = _prepare(replace(config, split_seed=1))
    assert other.test.image_names != first.test.image_names


def test_caps_and_given_tokenizer(shapes_data, shapes_cache_dir):
    config = DataConfig(source="shapes", shapes_images=60, cache_dir=str(shapes_cache_dir),
                        max_samples=20, max_eval_samples=4)
    data = _prepare(config, tokenizer=shapes_data.tokenizer)
    assert [len(data.split(k)) for k in ("train", "val", "test")] == [20, 4, 4]
    assert set(data.train.image_names) <= set(shapes_data.train.image_names)
    assert data.tokenizer is shapes_data.tokenizer
    with pytest.raises(ConfigError, match="context_length"):
        _prepare(config, tokenizer=shapes_data.tokenizer, context_length=20)


def test_tokenizer_is_trained_on_training_captions_only(tmp_path):
    folder = _folder(tmp_path, words={i: "zebra" for i in range(15, 20)})
    split = tmp_path / "split.json"
    names = [f"{i:03d}.jpg" for i in range(20)]
    split.write_text(json.dumps({"train": names[:12], "val": names[12:15], "test": names[15:]}))
    config = DataConfig(source="folder", data_dir=str(folder), split_file=str(split),
                        cache_dir=str(tmp_path / "cache"))
    data = _prepare(config, vocab_size=300)
    assert data.source == "folder" and data.flip_safe is True and data.crop_scale == (0.5, 1.0)
    assert data.test.image_names == names[15:]
    vocab = json.loads(data.tokenizer.to_json())["model"]["vocab"]
    assert "Ġzebra" not in vocab and "Ġdog" in vocab


def test_auto_uses_cached_flickr30k_offline(fake_flickr, no_network, tmp_path):
    config = DataConfig(source="auto", kaggle_handle=FLICKR_HANDLE, cache_dir=str(tmp_path / "c"))
    data = _prepare(config)
    assert data.source == "flickr30k" and data.flip_safe is True
    assert sum(len(data.split(k).captions) for k in ("train", "val", "test")) == fake_flickr.n_captions
    assert [len(data.split(k)) for k in ("train", "val", "test")] == [10, 1, 1]


def test_auto_falls_back_to_shapes_with_a_notice(empty_kagglehub_cache, no_network, tmp_path, capsys):
    config = DataConfig(source="auto", shapes_images=30, cache_dir=str(tmp_path / "c"),
                        download_timeout=0.5)
    data = _prepare(config, quiet=False)
    assert data.source == "shapes"
    err = capsys.readouterr().err
    assert "NOTICE: Flickr30k is not available" in err and "Shapes" in err and "--data-dir" in err


def test_auto_with_data_dir(tmp_path, fake_flickr, no_network):
    folder = _folder(tmp_path)
    plain = _prepare(DataConfig(data_dir=str(folder), cache_dir=str(tmp_path / "c")))
    assert plain.source == "folder" and len(plain.train) == 16
    local = _prepare(DataConfig(data_dir=str(fake_flickr.version_dir), cache_dir=str(tmp_path / "c")))
    assert local.source == "flickr30k"


def test_bad_images_are_skipped_and_the_run_goes_on(tmp_path):
    folder = _folder(tmp_path)
    (folder / "003.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "007.jpg").unlink()
    config = DataConfig(source="folder", data_dir=str(folder), cache_dir=str(tmp_path / "c"))
    with pytest.warns(DataWarning) as record:
        data = _prepare(config)
    messages = " ".join(str(w.message) for w in record)
    assert "skipped 1 of 20 images named in the captions but missing" in messages
    assert "skipped 1 of 19 images that could not be read" in messages
    used = sum((data.split(k).image_names for k in ("train", "val", "test")), [])
    assert len(used) == 18 and "003.jpg" not in used and "007.jpg" not in used


def test_folder_source_needs_a_folder(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        _prepare(DataConfig(source="folder", cache_dir=str(tmp_path)))


def test_tokenizer_round_trip_through_prepared_tokens(shapes_data):
    restored = Tokenizer.from_json(shapes_data.tokenizer.to_json())
    assert torch.equal(restored.encode(shapes_data.val.captions), shapes_data.val.tokens)
