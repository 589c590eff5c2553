"""Errors a user can fix: they are reported as one line, never as a traceback."""

from kdsweep.core.secrets import mask_secrets


class KdsweepError(Exception):
    """A problem with the user's input or environment, with the fix in its message.

    The message is masked when the error is made (a storage or tracking URL in it loses
    its password), so that wherever it ends up (the one-line report, a traceback under
    HYDRA_FULL_ERROR, a trial's error attribute, a pickled job result) it is clean, and the
    code that raises it names URLs as they are. A command exits :attr:`exit_code`."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        super().__init__(*(mask_secrets(a) if isinstance(a, str) else a for a in args))


class ConfigError(KdsweepError):
    """The composed configuration is invalid (wrong type, unknown key, out of range)."""


class CommandFailed(KdsweepError):
    """The command ran and failed (too many of a sweep's trials failed): exit 1, not the
    user errors' 2."""

    exit_code = 1


class DataError(KdsweepError):
    """A data set is missing, unreadable or inconsistent."""


class CheckpointError(KdsweepError):
    """A teacher checkpoint is corrupt or does not match this run."""


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss). A fault inside a trial, not a user error."""

    exit_code = 1


#: The longest one-line report: long enough for a path, a library's reason and the fix.
LINE_LIMIT = 500
_CLIPPED = " [...] "


def one_line(exc: BaseException, limit: int = LINE_LIMIT) -> str:
    """An error as one line for a person: its message with white space collapsed (its
    type name if it has none), secrets masked, then clipped to ``limit`` characters in the
    middle, so that what failed (its start) and the fix (its end) both stay. Masked before
    it is clipped: a clip could cut a password out of the mask's reach."""
    text = mask_secrets(" ".join(str(exc).split())) or type(exc).__name__
    if len(text) <= limit:
        return text
    tail = (limit - len(_CLIPPED)) // 3
    return text[: limit - len(_CLIPPED) - tail] + _CLIPPED + text[-tail:]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), to name
    a library's reason inside a one-line KdsweepError: library messages often carry
    multi-line trailers. Masked; the command's boundary clips the whole line."""
    lines = str(exc).strip().splitlines()
    return mask_secrets(lines[0]) if lines else type(exc).__name__


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM, raised in the main thread by kdsweep's signal handlers
    (kdsweep.signals). A KeyboardInterrupt, so every ``except BaseException`` clean-up (the
    MLflow run ended KILLED, temporary files removed, locks released) runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def interrupt_name(exc: BaseException) -> str:
    """SIGINT / SIGTERM for an Interrupted, SIGINT for a plain KeyboardInterrupt."""
    return getattr(exc, "signal_name", "SIGINT")


class Abandoned(KeyboardInterrupt):
    """A sweep trial whose sweeper has already ended it (interrupted, or found it stale):
    the job stops, and its run ends KILLED like an interrupted one."""
