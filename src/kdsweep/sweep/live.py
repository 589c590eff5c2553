"""The sweep's one live line on a terminal: trials done, pruned and failed of n, the best
so far, elapsed time and ETA, rewritten in place after each trial. Log lines keep their own
lines: the console filter clears the live line before one is printed (kdsweep.console).
Not a terminal (CI, nohup, a pipe): nothing is written, the plain per-trial lines say it."""

from __future__ import annotations

import sys
from typing import TextIO

CLEAR = "\r\x1b[K"  # carriage return, erase to the end of the line


class LiveLine:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.active = False

    @property
    def enabled(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def show(self, text: str) -> None:
        if self.enabled:
            self.stream.write(CLEAR + text)
            self.stream.flush()
            self.active = True

    def clear(self) -> None:
        if self.active:
            self.stream.write(CLEAR)
            self.stream.flush()
            self.active = False


#: The process's live line (one sweep runs per process).
LIVE = LiveLine()
