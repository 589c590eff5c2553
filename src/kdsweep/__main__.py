"""``python -m kdsweep``: the same command line as ``kdsweep``."""

from kdsweep.main import main

main()
