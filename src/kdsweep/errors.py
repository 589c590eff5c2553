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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for
    one-line reports: library messages often carry multi-line trailers."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
