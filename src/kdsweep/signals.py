"""SIGINT and SIGTERM become :class:`~kdsweep.errors.Interrupted` in the main thread, but
never in the middle of a write to a store.

A signal raised inside an SQLAlchemy transaction (MLflow's SQLite store, Optuna's RDB
storage) skips the library's rollback, which catches ``Exception`` only: the connection
keeps its write lock, and the clean-up that follows (ending the run KILLED, marking the
trial FAIL) then fails with "database is locked". So writes run inside
:func:`deferred_signals`; a signal that arrives there is held and raised as soon as the
write is done.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kdsweep.errors import Interrupted


@dataclass
class _SignalState:
    installed: bool = False
    raised: bool = False  # once raised, later signals are ignored so clean-up completes
    depth: int = 0  # nesting of deferred_signals() in the main thread
    pending: int | None = None


_state = _SignalState()


def _handler(signum: int, frame: object) -> None:
    if _state.raised:
        return
    if _state.depth:
        _state.pending = signum
        return
    _state.raised = True
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once: the run (or
    the sweep's trials and parent run) is ended KILLED on the way out and the process exits
    130 / 143 with one line. A second signal while that clean-up runs is ignored, so it
    completes (SIGKILL still ends the process; a rerun then finds the trials stale)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _state.installed = True
    _state.raised = False
    _state.pending = None
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT / SIGTERM until the block ends, then raise it. Only the main thread
    receives signals, so other threads' blocks need (and get) no deferral."""
    if not _state.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if not _state.depth and _state.pending is not None and not _state.raised:
            signum, _state.pending = _state.pending, None
            _state.raised = True
            raise Interrupted(signum)
