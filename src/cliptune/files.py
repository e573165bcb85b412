"""Files that appear whole or not at all: every report, record, manifest, cache and
checkpoint cliptune writes goes through `atomic_path` (or `write_atomic`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file (mkstemp's is private)


@contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same folder, same suffix, so writers that
    choose a format by suffix still do); when the block ends without an error the file
    is renamed over `path` (`os.replace`: readers see the old file or the new one, never a
    part). On an error the temporary file is removed and `path` is left as it was.
    `durable` flushes the file to disk before the rename (checkpoints, caches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                    suffix=f".tmp{path.suffix}")
    os.close(handle)
    temp = Path(name)
    try:
        temp.chmod(FILE_MODE)  # caches and shards are read by other users too
        yield temp
        if durable:
            with open(temp, "rb+") as file:
                os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` through `atomic_path`."""
    with atomic_path(path) as temp:
        if isinstance(data, str):
            temp.write_text(data, encoding="utf-8")
        else:
            temp.write_bytes(data)
