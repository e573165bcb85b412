"""What the user is told about their mistakes: errors that stop a run, warnings about skipped input.

CLIs catch `CliptuneError` and print its message without a traceback: every
subclass carries a message that names the file, flag or key at fault and the fix.
Input the data layer can do without (a corrupt image, an empty caption) is skipped with
a `DataWarning` that counts it (`warn_skipped`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence


class CliptuneError(Exception):
    """A problem the user can fix (bad flag, bad file, missing data)."""


class ConfigError(CliptuneError):
    """An unknown config key, a value of the wrong type, or an invalid combination."""


class DataError(CliptuneError):
    """A dataset that cannot be found, downloaded or parsed."""


class CheckpointError(CliptuneError):
    """A file that is not a cliptune checkpoint, or a corrupt one."""


class TrainingDiverged(CliptuneError):
    """The loss became NaN or infinite."""


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
