"""SIGINT and SIGTERM as cooperative cancellation: the handler records the signal, and
kdsweep's own code raises :class:`~kdsweep.errors.Interrupted` where it checks
(:func:`check_interrupt`): between two batches of every loop over data, between two
launches of a sweep and after its tells, between two uploads, when a command's imports
are done and when it returns.

Nothing is raised inside a library call, so no write is cut in half: a signal raised
inside an SQLAlchemy transaction (MLflow's SQLite store, Optuna's RDB storage) would skip
the library's rollback, which catches ``Exception`` only, and the connection would keep
its write lock; the clean-up that follows (ending the run KILLED, failing the trial)
would then fail with "database is locked".

One kind of place raises at once: a wait in which none of kdsweep's code runs
(:func:`interruptible`): a launcher waiting for jobs in other processes, a lock another
process holds. A job the launcher runs in this process is kdsweep's code again
(:func:`cooperative`). Python swallows an exception raised where it cannot propagate (a
weakref callback, a ``__del__``, printing "Exception ignored in ..."); a signal raised
there during such a wait is delivered again by ``sys.unraisablehook`` once the callback
has returned.

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
    pending: int | None = None  # the first signal, until it is raised
    raised: bool = False  # once raised, later signals are ignored so clean-up completes
    waiting: int = 0  # nesting of interruptible() waits in the main thread
    in_unraisable_hook: bool = False
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
    if _state.pending is None:
        _state.pending = signum
    if _state.waiting:
        if _state.in_unraisable_hook or _importing(frame):
            # Raised in a callback it would be swallowed; raised inside an import it
            # would leave a module half-made (torch's C++ start-up then aborts the whole
            # process, "terminate called ... pybind11::error_already_set"): once more,
            # a moment later, until it lands where it can be raised.
            _deliver_again(signum)
            return
        check_interrupt()


def _importing(frame: object) -> bool:
    """Whether the main thread is inside an import (importlib's frames on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):  # type: ignore[attr-defined]
            return True
        frame = frame.f_back  # type: ignore[attr-defined]
    return False


def raised_signal() -> int | None:
    """The signal raised as :class:`Interrupted` in this command, if one was: whatever
    ends the command after it (a library's clean-up failing on the state the interrupt
    left) is its consequence, and the command reports the interrupt."""
    return _state.pending if _state.raised else None


def check_interrupt() -> None:
    """Raise :class:`Interrupted` for a signal received since the last check, once: the
    clean-up that follows is not interrupted again. Cheap enough for every batch."""
    if _state.pending is not None and not _state.raised:
        _state.raised = True
        raise Interrupted(_state.pending)


@contextmanager
def interruptible() -> Iterator[None]:
    """A wait in which none of kdsweep's code runs (jobs in other processes, a lock held
    elsewhere): a signal is raised at once, inside it."""
    if not _state.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    check_interrupt()
    _state.waiting += 1
    try:
        yield
    finally:
        _state.waiting -= 1


@contextmanager
def cooperative() -> Iterator[None]:
    """kdsweep's code again inside an :func:`interruptible` wait (a job the launcher runs
    in this process): signals wait for its checks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved, _state.waiting = _state.waiting, 0
    try:
        yield
    finally:
        _state.waiting = saved


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
        _deliver_again(unraisable.exc_value.signum)
    finally:
        _state.in_unraisable_hook = False


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM are recorded, and raised as :class:`Interrupted` at the next
    check in the main thread, once: the run (or the sweep's trials and parent run) is
    ended KILLED on the way out and the process exits 130 / 143 with one line. A second
    signal while that clean-up runs is ignored, so it completes (SIGKILL still ends the
    process; a rerun then finds the trials stale)."""
    global _next_unraisablehook
    if threading.current_thread() is not threading.main_thread():
        return
    ours = _state.installed and signal.getsignal(signal.SIGTERM) is _handler
    if ours and not (_state.finished or _state.raised):
        # Installed already for this command (by its console script, before the imports):
        # a signal recorded since then is kept, for the command's first check.
        return
    _state.pending = None
    _state.raised = False
    _state.finished = False
    _state.late_signals = 0
    if not _state.installed:
        atexit.register(_ignore_signals_from_now_on)
    _state.installed = True
    if sys.unraisablehook is not _unraisablehook:
        _next_unraisablehook, sys.unraisablehook = sys.unraisablehook, _unraisablehook
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)


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
