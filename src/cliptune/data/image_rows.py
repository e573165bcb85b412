"""`ImageRows`: some rows of an image-cache `.npy` file, read on access, never held in memory.

A split is a view of the one cache file that every process shares: creating it reads
nothing, and indexing reads just the rows asked for, with plain reads into the caller's
buffer (e.g. pinned memory for a GPU). Plain reads rather than a memory map: a mapped
page counts in the resident memory (RSS) of every process that touched it, so one epoch
over a memory-mapped 224 px Flickr30k cache would show 4+ GB per process, while read
pages live only in the kernel's page cache, shared by training, DataLoader workers, HPO
workers and `evaluate.py`. Pickles as (path, rows): worker processes reopen the file.

`empty_batch` allocates the batch-sized host buffers that rows (and augmented batches)
are written into.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cliptune.errors import DataError


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
