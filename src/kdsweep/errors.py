"""Errors a user can fix: they are reported as one line, never as a traceback."""


class KdsweepError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


class ConfigError(KdsweepError):
    """The composed configuration is invalid (wrong type, unknown key, out of range)."""


class DataError(KdsweepError):
    """A data set is missing, unreadable or inconsistent."""


class CheckpointError(KdsweepError):
    """A teacher checkpoint is corrupt or does not match this run."""


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss). A fault inside a trial, not a user error."""
