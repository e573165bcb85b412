"""Error types for user mistakes.

CLIs catch `CliptuneError` and print its message without a traceback: every
subclass carries a message that names the file, flag or key at fault and the fix.
"""


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
