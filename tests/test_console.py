"""What reaches the console: everything in a single run; in a multirun, the sweep's own
lines and warnings, not each job's epochs nor the libraries' chatter."""

from __future__ import annotations

import logging

from kdsweep.console import QuietConsole


def _record(name: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, "message", None, None)


def test_a_single_run_shows_everything() -> None:
    quiet = QuietConsole(mode="RunMode.RUN", verbose=False)
    assert quiet.filter(_record("kdsweep.train")) and quiet.filter(_record("alembic.runtime"))


def test_a_multirun_keeps_the_sweeps_lines_and_every_warning() -> None:
    quiet = QuietConsole(mode="RunMode.MULTIRUN", verbose=False, keep=["kdsweep.sweep"])
    assert quiet.filter(_record("kdsweep.sweep"))
    assert quiet.filter(_record("kdsweep.sweep.core"))
    assert not quiet.filter(_record("kdsweep.train"))  # per-epoch lines: the job's log file
    assert not quiet.filter(_record("hydra._internal.core_plugins.basic_launcher"))
    assert not quiet.filter(_record("kdsweep.sweeping"))  # a prefix, not a package
    assert quiet.filter(_record("kdsweep.train", logging.WARNING))
    assert quiet.filter(_record("mlflow.store", logging.ERROR))


def test_hydra_verbose_shows_it_all() -> None:
    loud = QuietConsole(mode="RunMode.MULTIRUN", verbose=True, keep=["kdsweep.sweep"])
    assert loud.filter(_record("kdsweep.train")) and loud.filter(_record("alembic"))


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_the_live_line_is_rewritten_in_place_on_a_terminal_only() -> None:
    from kdsweep.sweep.live import CLEAR, LiveLine

    terminal = _Stream(tty=True)
    live = LiveLine(terminal)
    live.show("[1/20: 0 pruned]")
    live.show("[2/20: 1 pruned]")
    assert terminal.text == f"{CLEAR}[1/20: 0 pruned]{CLEAR}[2/20: 1 pruned]"
    assert "\n" not in terminal.text
    live.clear()
    assert terminal.text.endswith(CLEAR) and not live.active

    pipe = _Stream(tty=False)  # CI, nohup: no control characters at all
    quiet = LiveLine(pipe)
    quiet.show("[1/20]")
    quiet.clear()
    assert pipe.text == ""
