"""Flickr30k from Kaggle (`hsankesara/flickr-image-dataset`) through `kagglehub`.

The handle in `DataConfig.kaggle_handle` is versioned (`.../versions/1`): kagglehub
serves a versioned handle from its cache (`$KAGGLEHUB_CACHE`, default
`~/.cache/kagglehub`) without asking the network, while an unversioned one asks the
API for the latest version first and fails offline even when the data is cached.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from cliptune.config import DataConfig
from cliptune.data.catalog import Catalog
from cliptune.data.folder import load_folder
from cliptune.errors import DataError

KAGGLE_API_HOST = ("api.kaggle.com", 443)
HOW_TO_AVOID = (
    "train on the built-in Shapes data with `--data shapes`, or point `--data-dir` at a "
    "local copy of Flickr30k (the folder holding results.csv and flickr30k_images/)"
)


def cached_path(handle: str) -> Path | None:
    """The dataset's folder in the KaggleHub cache, or None when it is not fully there."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_dataset_handle

    parsed = parse_dataset_handle(handle)
    if not parsed.is_versioned():
        return None  # the cache is keyed by version; only the API knows the latest one
    path = Cache().load_from_cache(parsed)
    return Path(path) if path else None


def kaggle_reachable(timeout: float) -> bool:
    """Whether the Kaggle API answers a TCP connection within `timeout` seconds.

    Name resolution cannot be given a time-out, so the probe runs in a daemon thread
    and is abandoned when `timeout` passes.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(KAGGLE_API_HOST, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def download(handle: str) -> Path:
    """Download (or find in the cache) the dataset with kagglehub; `DataError` if it fails."""
    import kagglehub

    try:
        return Path(kagglehub.dataset_download(handle))
    except KeyboardInterrupt:
        raise
    except Exception as err:  # network, HTTP 401/403/404, disk: all mean "cannot be had"
        raise DataError(
            f"could not download Flickr30k ({handle}) with kagglehub: "
            f"{type(err).__name__}: {err}. Without it, {HOW_TO_AVOID}"
        ) from None


def locate(config: DataConfig) -> Path:
    """The Flickr30k folder: `data_dir`, else the KaggleHub cache, else a download."""
    if config.data_dir:
        return Path(config.data_dir).expanduser()
    return cached_path(config.kaggle_handle) or download(config.kaggle_handle)


def available(config: DataConfig) -> tuple[bool, str]:
    """Whether Flickr30k can be had without waiting long, and if not, why."""
    if cached_path(config.kaggle_handle):
        return True, "in the KaggleHub cache"
    if kaggle_reachable(config.download_timeout):
        return True, "downloadable"
    return False, (
        f"it is not in the KaggleHub cache and api.kaggle.com did not answer within "
        f"{config.download_timeout:g} s"
    )


def load(config: DataConfig) -> Catalog:
    """The Flickr30k catalog (Kaggle layout; any other supported format in `data_dir`)."""
    root = locate(config)
    return load_folder(root, config.format, source="flickr30k")
