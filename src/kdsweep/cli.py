"""The console commands' entry points. SIGINT and SIGTERM are handled from a command's
first moment (kdsweep.signals), so a Ctrl-C while Hydra, torch or MLflow are still being
imported is one line and exit 130 (143 for SIGTERM), never a traceback."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from kdsweep.core.errors import interrupt_name
from kdsweep.core.signals import (
    check_interrupt,
    command_finished,
    install_signal_handlers,
    interruptible,
)


def _run(command: str, module: str, after: str) -> Any:
    """Install the handlers, then import ``module`` and call its ``main``; an interrupt
    that the command did not handle itself (during its imports, say) is reported here."""
    install_signal_handlers()
    try:
        # A signal during the imports is recorded and raised when they are done (raised
        # inside them, it could land in importlib's weakref callbacks).
        command_main = importlib.import_module(module).main
        check_interrupt()
        try:
            # Parsing, composing, reading: a signal is raised at once. The parts that write
            # to a store (a run, a sweep) are cooperative: they raise it at their checks.
            with interruptible():
                return command_main()
        finally:
            check_interrupt()  # replaces the command's own exit: the user interrupted it
            command_finished()  # a signal from now on is late: the exit code stays
    except KeyboardInterrupt as exc:
        print(f"{command}: interrupted by {interrupt_name(exc)}: {after}", file=sys.stderr)
        raise SystemExit(getattr(exc, "exit_code", 130)) from None


def kdsweep() -> Any:
    return _run("kdsweep", "kdsweep.main", "nothing had started; rerun the same command")


def kdsweep_report() -> Any:
    return _run(
        "kdsweep-report",
        "kdsweep.report_cli",
        "each report file is whole (written atomically); rerun to write them all",
    )


def kdsweep_eval() -> Any:
    return _run("kdsweep-eval", "kdsweep.evaluate", "nothing was written")
