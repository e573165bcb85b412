"""Warnings about input the data layer skips (missing or corrupt images, empty captions)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence


class DataWarning(UserWarning):
    """Some input was skipped; the run goes on without it."""


def warn_skipped(count: int, total: int, what: str, where: str, examples: Sequence[str] = ()) -> None:
    """Warn that `count` of `total` `what` in `where` were skipped, naming a few `examples`."""
    if count == 0:
        return
    shown = ", ".join(examples[:3])
    more = f" (e.g. {shown})" if shown else ""
    warnings.warn(
        f"skipped {count} of {total} {what} in {where}{more}", DataWarning, stacklevel=3
    )
