"""Flickr30k through the real kagglehub code, offline, from a fake cache laid out like the download."""

from __future__ import annotations

import pytest
import requests
from conftest import FLICKR_HANDLE, MALFORMED_IMAGE

from cliptune.config import DataConfig
from cliptune.data import flickr30k
from cliptune.errors import DataError


def test_cached_dataset_is_read_offline_through_kagglehub(fake_flickr, no_network):
    config = DataConfig(source="flickr30k", kaggle_handle=FLICKR_HANDLE)
    assert flickr30k.cached_path(FLICKR_HANDLE) == fake_flickr.version_dir
    catalog = flickr30k.load(config)
    assert catalog.source == "flickr30k"
    # The outer results.csv is read; images come from one folder, never the nested copy.
    assert catalog.root == fake_flickr.image_dir
    assert catalog.image_names == fake_flickr.image_names
    assert len(catalog.captions) == fake_flickr.n_captions  # the malformed row is kept
    malformed = catalog.image_names.index(MALFORMED_IMAGE)
    mine = [c for c, i in zip(catalog.captions, catalog.caption_image, strict=True) if i == malformed]
    assert mine[-1] == "A dog runs across the grass ."
    assert all(not c.startswith(" ") for c in catalog.captions)
    assert flickr30k.available(config) == (True, "in the KaggleHub cache")


@pytest.mark.parametrize("subdir", ["", "flickr30k_images", "flickr30k_images/flickr30k_images"])
def test_data_dir_reads_a_local_copy_at_any_level(fake_flickr, no_network, subdir):
    config = DataConfig(source="flickr30k", data_dir=str(fake_flickr.version_dir / subdir))
    catalog = flickr30k.load(config)
    assert len(catalog) == len(fake_flickr.image_names)
    assert len(catalog.captions) == fake_flickr.n_captions


def test_unversioned_handle_is_never_looked_up_in_the_cache(fake_flickr):
    assert flickr30k.cached_path("hsankesara/flickr-image-dataset") is None


def test_incomplete_download_is_not_used(fake_flickr, no_network):
    (fake_flickr.cache / "datasets/hsankesara/flickr-image-dataset/1.complete").unlink()
    assert flickr30k.cached_path(FLICKR_HANDLE) is None


def test_download_failure_is_a_data_error_saying_what_to_do(empty_kagglehub_cache, monkeypatch):
    import kagglehub

    def offline(handle, *args, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DataError, match="could not download Flickr30k.*ConnectionError.*--data shapes.*--data-dir"):
        flickr30k.load(DataConfig(source="flickr30k"))


def test_unreachable_network_makes_flickr_unavailable_promptly(empty_kagglehub_cache, no_network):
    ok, why = flickr30k.available(DataConfig(download_timeout=0.5))
    assert not ok and "not in the KaggleHub cache" in why


def test_probe_gives_up_after_the_timeout(monkeypatch):
    import time

    def hang(*args, **kwargs):  # an offline machine that never answers
        time.sleep(1.5)
        raise OSError("timed out")

    monkeypatch.setattr(flickr30k.socket, "create_connection", hang)
    start = time.perf_counter()
    assert flickr30k.kaggle_reachable(0.2) is False
    assert time.perf_counter() - start < 1.0
