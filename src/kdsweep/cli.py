"""The console commands' entry points. SIGINT and SIGTERM are handled from a command's
first moment (kdsweep.core.signals), so a Ctrl-C while Hydra, torch or MLflow are still
being imported is one line and exit 130 (143 for SIGTERM), never a traceback: the
signal is recorded here and reported by the command's boundary (kdsweep.core.boundary),
which every command's ``main`` runs inside."""

from __future__ import annotations

import importlib
from typing import Any

from kdsweep.core.signals import install_signal_handlers


def _run(module: str) -> Any:
    """Install the handlers, then import ``module`` and call its ``main``."""
    install_signal_handlers()
    # A signal during the imports is recorded, and raised at the boundary's first check
    # (raised inside them, it could land in importlib's weakref callbacks).
    return importlib.import_module(module).main()


def kdsweep() -> Any:
    return _run("kdsweep.main")


def kdsweep_report() -> Any:
    return _run("kdsweep.report_cli")


def kdsweep_eval() -> Any:
    return _run("kdsweep.evaluate")
