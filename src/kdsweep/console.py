"""What reaches the console: a filter for the console handlers of Hydra's logging configs
(conf/hydra/*_logging/kdsweep.yaml).

A single run shows everything it logs. In a multirun the console shows the sweep's own
compact lines (logger ``kdsweep.sweep``) and every warning and error; each job's per-epoch
lines and the libraries' chatter (MLflow's database set-up, Hydra's launch lines, which
repeat every override) stay in the job's log file. ``hydra.verbose=true`` shows it all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any


class QuietConsole(logging.Filter):
    def __init__(self, mode: Any = None, verbose: Any = False, keep: Sequence[str] = ()) -> None:
        super().__init__()
        self.quiet = str(mode).endswith("MULTIRUN") and not verbose
        self.keep = tuple(keep)

    def filter(self, record: logging.LogRecord) -> bool:
        shown = (
            not self.quiet
            or record.levelno >= logging.WARNING
            or any(record.name == name or record.name.startswith(name + ".") for name in self.keep)
        )
        if shown:
            from kdsweep.sweep.live import LIVE

            LIVE.clear()  # the line to be printed starts on a clean line
        return shown
