"""Numbers read back from records kdsweep does not control the bytes of (results.json,
Optuna attributes, checkpoint metrics): anything that is not a finite number, a bool, a
string, NaN or a missing key, reads as None, so a damaged field never becomes a figure."""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
