"""SIGINT and SIGTERM become :class:`~kdsweep.errors.Interrupted` in the main thread, but
never in the middle of a write to a store.

A signal raised inside an SQLAlchemy transaction (MLflow's SQLite store, Optuna's RDB
storage) skips the library's rollback, which catches ``Exception`` only: the connection
keeps its write lock, and the clean-up that follows (ending the run KILLED, marking the
trial FAIL) then fails with "database is locked". So writes run inside
:func:`deferred_signals`; a signal that arrives there is held and raised as soon as the
write is done.

Python swallows an exception raised where it cannot propagate: in a weakref callback, a
``__del__``, a garbage-collection callback (it prints "Exception ignored in ..." and goes
on). A signal that lands there would be lost, and the command would carry on as if
nothing had happened. :func:`install_signal_handlers` therefore also installs a
``sys.unraisablehook`` that recognises a swallowed :class:`Interrupted` and delivers the
signal again, from a helper thread, once the callback has returned.

Once the command has finished (:func:`command_finished`) a signal is late: the work is
done and the exit code is the command's. Python's shutdown resets every handler it set
back to the default action, so a signal landing there (while torch's modules are torn
down, a second or so) would kill the process silently with -SIGINT. The first late
signal is therefore ignored, a second one leaves a hung exit at once (128 + signal), and
an ``atexit`` callback sets SIGINT and SIGTERM to "ignore", which the shutdown keeps.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kdsweep.core.errors import Interrupted


@dataclass
class _SignalState:
    installed: bool = False
    raised: bool = False  # once raised, later signals are ignored so clean-up completes
    depth: int = 0  # nesting of deferred_signals() in the main thread
    pending: int | None = None
    in_unraisable_hook: bool = False
    swallowed: int | None = None  # a signal Python swallowed, not yet raised again
    finished: bool = False  # the command has returned: a signal now is late
    late_signals: int = 0


_state = _SignalState()
REDELIVERY_DELAY_S = 0.05  # far longer than the hook takes, far shorter than a user waits
_next_unraisablehook = sys.unraisablehook  # the hook ours passes every other exception to


def _handler(signum: int, frame: object) -> None:
    if _state.finished:
        _state.late_signals += 1
        if _state.late_signals > 1:  # the user insists: the exit itself is hanging
            os._exit(128 + signum)
        return
    if _state.raised:
        return
    if _state.depth:
        _state.pending = signum
        return
    if _state.in_unraisable_hook:  # raising here would be swallowed again: try once more later
        _deliver_again(signum)
        return
    _state.raised = True
    _state.swallowed = None
    raise Interrupted(signum)


def _deliver_again(signum: int) -> None:
    """Send ``signum`` to this process again a moment from now, from a timer thread: the
    handler then runs in the main thread once the callback that swallowed it has returned
    (swallowed again, it comes back here: it is never lost)."""
    _state.raised = False
    timer = threading.Timer(REDELIVERY_DELAY_S, os.kill, args=(os.getpid(), signum))
    timer.daemon = True  # never keeps a finished process alive
    timer.start()


def _unraisablehook(unraisable: sys.UnraisableHookArgs) -> None:
    if not isinstance(unraisable.exc_value, Interrupted):
        _next_unraisablehook(unraisable)
        return
    if _state.finished:  # nothing is left to interrupt
        return
    _state.in_unraisable_hook = True
    try:
        _state.swallowed = unraisable.exc_value.signum
        _deliver_again(unraisable.exc_value.signum)
    finally:
        _state.in_unraisable_hook = False


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once: the run (or
    the sweep's trials and parent run) is ended KILLED on the way out and the process exits
    130 / 143 with one line. A second signal while that clean-up runs is ignored, so it
    completes (SIGKILL still ends the process; a rerun then finds the trials stale)."""
    global _next_unraisablehook
    if threading.current_thread() is not threading.main_thread():
        return
    _state.raised = False
    _state.pending = None
    _state.swallowed = None
    _state.finished = False
    _state.late_signals = 0
    if not _state.installed:
        atexit.register(_ignore_signals_from_now_on)
    _state.installed = True
    if sys.unraisablehook is not _unraisablehook:
        _next_unraisablehook, sys.unraisablehook = sys.unraisablehook, _unraisablehook
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


def raise_pending() -> None:
    """Raise now a signal held by :func:`deferred_signals`: called between two writes of a
    long loop (queueing thousands of runs under the study lock), where no write is in
    flight. A signal is held for one write, never through the whole loop."""
    if _state.pending is not None and not _state.raised:
        signum, _state.pending = _state.pending, None
        _state.raised = True
        raise Interrupted(signum)


def raise_swallowed() -> None:
    """Raise now a signal Python swallowed whose second delivery has not come yet: a
    command that ends within the delivery delay (an argparse error, say) must still exit
    as interrupted, not with its own status."""
    if _state.swallowed is not None and not _state.raised:
        signum, _state.swallowed = _state.swallowed, None
        _state.raised = True
        raise Interrupted(signum)


def command_finished() -> None:
    """Mark the command as done: from now on a first signal is ignored (the exit code
    stays the command's) and a second one exits at once with 128 + its number."""
    _state.finished = True


def _ignore_signals_from_now_on() -> None:
    # Runs at exit, before Python resets its handlers to the default (deadly) action;
    # an ignored signal stays ignored through the rest of the shutdown.
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
