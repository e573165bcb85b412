"""Decode and resize every image once into a uint8 array file shared by all runs.

Layout: `<cache_dir>/images/<source>-<hash of the image folder>/<size>px-<key>.npy`, an
(N, size, size, 3) uint8 `.npy` opened as a read-only memmap, and next to it a `.json`
listing the images that could not be read.

Key: SHA-256 over the cache format, the resize method, the image size, and every
image's name and SHA-256 content digest. Digests hash the file bytes (about 1.7 GB/s
per core with SHA-NI, so all of Flickr30k's 4.2 GB takes a second or two on two cores
and a few hundred Shapes files take milliseconds); unlike names, sizes and mtimes, they
notice a file replaced by another with the same size and time stamp. Any change of
content or size gives a new key: the file is rebuilt and the stale one deleted.

A build writes into a temporary file and renames it into place when complete, so an
interrupted build is never reused. Builds of one cache are serialised by a file lock
(`<stem>.lock`, the `filelock` library: an OS lock released when its holder exits, even
killed): processes that need the same cache at once (HPO workers, torchrun ranks on one
host) wait for the one build and then read its file, so a machine builds a cache once
and holds at most one temporary copy. Decoding is spread over a process pool (one process
per core), hashing over threads (hashlib releases the GIL).

Pixels: `cliptune.data.preprocess.decode_image`, the one recipe that the shard decoder,
`retrieve.py` and the exports share.

Unreadable images (corrupt, truncated, over PIL's decompression-bomb pixel limit) are
left as zeros, marked bad, and reported with a warning that counts them.

Reading (`ImageRows`): a split is a view of some rows of the one cache file that every
process shares: creating it reads nothing, and indexing reads just the rows asked for,
with plain reads into the caller's buffer (e.g. pinned memory for a GPU). Plain reads
rather than a memory map: a mapped page counts in the resident memory (RSS) of every
process that touched it, so one epoch over a memory-mapped 224 px Flickr30k cache would
show 4+ GB per process, while read pages live only in the kernel's page cache, shared by
training, DataLoader workers, HPO workers and `evaluate.py`. `ImageRows` pickles as
(path, rows): worker processes reopen the file. `empty_batch` allocates the batch-sized
host buffers that rows (and augmented batches) are written into.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from cliptune.data.preprocess import DECODE_ERRORS, RESIZE_METHOD, decode_error, decode_image
from cliptune.errors import DataError, warn_skipped
from cliptune.files import atomic_path, write_atomic
from cliptune.runtime import usable_cores

CACHE_FORMAT = 2  # 2: full-size decode (no JPEG draft mode), the recipe of data/preprocess.py
SERIAL_BELOW = 64  # images; a process pool costs more than it saves below this


@dataclass
class ImageCache:
    """The cached images of one dataset at one size."""

    images: np.ndarray  # uint8 (N, size, size, 3), a read-only memmap
    valid: np.ndarray  # bool (N,): False where the image could not be read
    path: Path
    reused: bool


def default_cache_dir(configured: str | None) -> Path:
    """`DataConfig.cache_dir`, else `$CLIPTUNE_CACHE`, else `~/.cache/cliptune`."""
    chosen = configured or os.environ.get("CLIPTUNE_CACHE") or "~/.cache/cliptune"
    return Path(chosen).expanduser()


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes ('missing' when it cannot be opened)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return "missing"


def _read_error(path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode_image(path, size), None
    except DECODE_ERRORS as err:
        return None, decode_error(err)


def _decode_chunk(target: Path, rows: list[int], paths: list[Path], size: int) -> dict[int, str]:
    """Decode `paths` into `rows` of the `.npy` at `target`; return {row: reason} for failures."""
    images = np.load(target, mmap_mode="r+")
    errors = {}
    for row, path in zip(rows, paths, strict=True):
        pixels, error = _read_error(path, size)
        if error is None:
            images[row] = pixels
        else:
            errors[row] = error
    images.flush()
    return errors


def _chunks(n: int, parts: int) -> list[range]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _decode_all(target: Path, paths: list[Path], size: int, workers: int) -> dict[int, str]:
    """Decode every path into its row of `target`, in a process pool when worthwhile."""
    if len(paths) < SERIAL_BELOW or workers <= 1:
        return _decode_chunk(target, list(range(len(paths))), paths, size)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    errors: dict[int, str] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = [pool.submit(_decode_chunk, target, list(rows), [paths[i] for i in rows], size)
                   for rows in _chunks(len(paths), workers * 8)]
        for future in futures:
            errors.update(future.result())
    return errors


def cache_key(names: list[str], digests: list[str], size: int) -> str:
    """The content key of a cache (see the module docstring)."""
    text = json.dumps([CACHE_FORMAT, RESIZE_METHOD, size, names, digests])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _build(path: Path, paths: list[Path], size: int, workers: int) -> dict[int, str]:
    for leftover in path.parent.glob(f".{path.stem}.*"):  # a killed build's (we hold the lock)
        leftover.unlink(missing_ok=True)
    with atomic_path(path, durable=True) as partial:
        images = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                           shape=(len(paths), size, size, 3))
        del images  # workers open it themselves; the file is already full size
        return _decode_all(partial, paths, size, workers)


@contextlib.contextmanager
def _build_lock(lock_path: Path, path: Path) -> Iterator[None]:
    """Hold the lock of one cache's build; say so once when another process holds it."""
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"image cache: waiting for another process to finish building {path}",
              file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def load_or_build(root: Path, names: list[str], size: int, cache_dir: Path, *, slot: str,
                  workers: int | None = None) -> ImageCache:
    """The cache of images `root/names` at `size` px: reused when the content key matches."""
    workers = workers or usable_cores()
    paths = [Path(root) / name for name in names]
    with ThreadPoolExecutor(workers) as pool:  # hashlib and file reads release the GIL
        digests = list(pool.map(file_digest, paths, chunksize=64))
    folder_hash = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / "images" / f"{slot}-{folder_hash}"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{size}px-{cache_key(names, digests, size)}"
    path, meta_path = folder / f"{stem}.npy", folder / f"{stem}.json"
    reused = path.is_file() and meta_path.is_file()
    if not reused:
        with _build_lock(folder / f"{stem}.lock", path):
            reused = path.is_file() and meta_path.is_file()  # another process built it meanwhile
            if not reused:
                errors = _build(path, paths, size, workers)
                bad = {names[row]: reason for row, reason in sorted(errors.items())}
                write_atomic(meta_path, json.dumps({"names": names, "bad": bad}))
                for stale in folder.glob(f"{size}px-*"):
                    if stale.stem != stem and stale.suffix != ".lock":  # held by a live builder
                        stale.unlink(missing_ok=True)
    bad = json.loads(meta_path.read_text(encoding="utf-8"))["bad"]
    images = np.load(path, mmap_mode="r")
    if images.shape != (len(names), size, size, 3):
        raise DataError(f"image cache {path} has shape {images.shape}; delete it and rerun")
    valid = np.array([name not in bad for name in names], dtype=bool)
    warn_skipped(len(bad), len(names), "images that could not be read", str(root),
                 [f"{name}: {reason}" for name, reason in bad.items()])
    return ImageCache(images, valid, path, reused)


# ---------------------------------------------------------------- reading


class ImageRows:
    """uint8 images `(len(rows), H, W, 3)`: rows `rows` of the (N, H, W, 3) `.npy` at `path`."""

    def __init__(self, path: str | Path, rows: np.ndarray | None = None) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            major, _ = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            self._offset = handle.tell()
        if dtype != np.uint8 or fortran or len(shape) != 4 or shape[3] != 3:
            raise DataError(f"{self.path}: not an image cache (shape {shape}, {dtype}); delete it")
        self._image_shape = tuple(shape[1:])
        self._row_bytes = int(np.prod(self._image_shape))
        all_rows = np.arange(shape[0], dtype=np.int64)
        self.rows = all_rows if rows is None else all_rows[np.asarray(rows, dtype=np.int64)]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self._image_shape)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def subset(self, positions: np.ndarray) -> ImageRows:
        """A view of the images at `positions` of this one (no pixels read)."""
        view = object.__new__(ImageRows)
        view.__dict__.update(self.__dict__)
        view.rows = self.rows[np.asarray(positions, dtype=np.int64)]
        return view

    def read(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The images at `positions` as uint8 (n, H, W, 3), written into `out` when given.

        Consecutive rows of the file are read with one call each.
        """
        rows = self.rows[np.asarray(positions, dtype=np.int64).reshape(-1)]
        if out is None:
            out = np.empty((len(rows), *self._image_shape), dtype=np.uint8)
        if out.shape != (len(rows), *self._image_shape) or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {(len(rows), *self._image_shape)}")
        flat = memoryview(out.reshape(-1))
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        with open(self.path, "rb", buffering=0) as handle:
            for first, last in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
                handle.seek(self._offset + int(rows[first]) * self._row_bytes)
                target = flat[first * self._row_bytes:last * self._row_bytes]
                while len(target):
                    got = handle.readinto(target)
                    if not got:
                        raise DataError(f"{self.path} is truncated; delete it and rerun")
                    target = target[got:]
        return out

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([np.arange(len(self))[key]]))[0]
        return self.read(np.arange(len(self))[key])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        images = self.read(np.arange(len(self)))
        return images if dtype is None else images.astype(dtype)


def read_images(images: np.ndarray | ImageRows, positions: np.ndarray,
                out: np.ndarray | None = None) -> np.ndarray:
    """`images[positions]` as a uint8 (n, H, W, 3) array (into `out` when given), for a split's
    `ImageRows` or a plain array."""
    if isinstance(images, ImageRows):
        return images.read(positions, out)
    if out is None:
        return np.asarray(images[positions])
    return np.take(images, positions, axis=0, out=out)


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu",
                pin_memory: bool = False) -> torch.Tensor:
    """An uninitialised tensor for a batch (tens of MB) that is about to be written whole.

    On the CPU it comes from NumPy, which asks the kernel for transparent huge pages for
    large arrays: first touching a 38 MB uint8 or 77 MB float32 batch then costs 2.5x
    less than with `torch.empty` (4 KB pages, one page fault each). Pinned buffers and
    other devices come from torch's own allocators.
    """
    device = torch.device(device)
    if device.type == "cpu" and not pin_memory:
        numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype  # e.g. torch.uint8 -> np.uint8
        return torch.from_numpy(np.empty(shape, dtype=numpy_dtype))
    return torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory)
