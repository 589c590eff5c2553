"""``python -m kdsweep``: the same command line as ``kdsweep``."""

from kdsweep.cli import kdsweep

kdsweep()
