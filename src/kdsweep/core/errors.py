"""Errors a user can fix: they are reported as one line, never as a traceback."""

import sys

from kdsweep.core.secrets import mask_secrets


class KdsweepError(Exception):
    """A problem with the user's input or environment, with the fix in its message.

    The message is masked when the error is made (a storage or tracking URL in it loses
    its password), so that wherever it ends up (the one-line report, a traceback under
    HYDRA_FULL_ERROR, a trial's error attribute, a pickled job result) it is clean, and the
    code that raises it names URLs as they are."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(mask_secrets(a) if isinstance(a, str) else a for a in args))


class ConfigError(KdsweepError):
    """The composed configuration is invalid (wrong type, unknown key, out of range)."""


class DataError(KdsweepError):
    """A data set is missing, unreadable or inconsistent."""


class CheckpointError(KdsweepError):
    """A teacher checkpoint is corrupt or does not match this run."""


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN or inf loss). A fault inside a trial, not a user error."""


def report_error(exc: BaseException) -> None:
    """The one line a command prints for an error the user can fix (secrets masked)."""
    message = " ".join(str(exc).split())
    print(f"kdsweep: error: {mask_secrets(message)}", file=sys.stderr)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for
    one-line reports: library messages often carry multi-line trailers. Masked here,
    because callers clip it (``first_line(exc)[:200]``) before the error it goes into is
    masked, and a clip can cut a password out of the mask's reach."""
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
