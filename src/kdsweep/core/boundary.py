"""The one boundary every console command runs inside (``kdsweep``, ``kdsweep-eval``,
``kdsweep-report``), after lightning-hydra-template's ``task_wrapper``: the code below it
raises, this reports. Here, and only here:

- SIGINT and SIGTERM handlers are installed (kdsweep.core.signals), and a signal the
  command did not handle is one line, ``<prog>: interrupted by SIGTERM: <what was left>``,
  and exit 130 / 143;
- an error the user can fix (:class:`~kdsweep.core.errors.KdsweepError`, a diverged
  loss) is one line, ``<prog>: error: ...``, masked and clipped (``one_line``), and its
  ``exit_code`` (2 for user errors).

Code below raises ``KdsweepError(...) from exc`` with the library's reason in its
message (``first_line(exc)``): it neither prints, clips nor masks.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from signal import Signals
from typing import ParamSpec, TypeVar

from kdsweep.core.errors import KdsweepError, NonFiniteLossError, interrupt_name, one_line
from kdsweep.core.signals import (
    check_interrupt,
    command_finished,
    install_signal_handlers,
    interruptible,
    raised_signal,
)

P = ParamSpec("P")
R = TypeVar("R")


def command(
    prog: str, interrupted: str | Callable[[], str]
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a command's ``main`` inside the boundary. ``interrupted`` says what a signal
    left behind (or computes it, when that depends on the arguments)."""

    def wrap(main: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(main)
        def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
            install_signal_handlers()  # kept as they are if the console script installed them
            try:
                try:
                    check_interrupt()  # a signal during the imports
                    # Parsing, composing, reading: a signal is raised at once. The parts
                    # that write to a store (a run, a sweep) are cooperative: they raise
                    # it at their checks (kdsweep.core.signals).
                    with interruptible():
                        return main(*args, **kwargs)
                finally:
                    check_interrupt()  # replaces the command's own exit: the user interrupted it
                    command_finished()  # a signal from now on is late: the exit code stays
            except BaseException as exc:
                signum = raised_signal()
                if isinstance(exc, KeyboardInterrupt) or signum is not None:
                    # After an interrupt, what a library's clean-up raised on the way out
                    # (OmegaConf's half-set node, say) is the interrupt's consequence.
                    name = Signals(signum).name if signum else interrupt_name(exc)
                    code = 128 + signum if signum else getattr(exc, "exit_code", 130)
                    left = interrupted() if callable(interrupted) else interrupted
                    print(f"{prog}: interrupted by {name}: {left}", file=sys.stderr)
                    raise SystemExit(code) from None
                if isinstance(exc, (KdsweepError, NonFiniteLossError)):
                    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
                    raise SystemExit(exc.exit_code) from None
                raise

        return bounded

    return wrap
