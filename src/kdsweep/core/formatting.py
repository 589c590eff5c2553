"""How kdsweep writes numbers in its tables and reports: one dash for a value that is
missing, and fixed decimals per kind (accuracy, points, p-values, intervals)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdsweep.core.stats import ArmStats

DASH = "–"


def fmt(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def accuracy(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def pct(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f} %"


def points(value: float | None) -> str:
    return DASH if value is None else f"{value:+.2f} points"


def seconds(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f}"


def p_value(value: float) -> str:
    return DASH if math.isnan(value) else f"{value:.3g}"


def mean_ci(stats: ArmStats) -> str:
    """'97.41 ± 0.52' (mean ± 95 % Student-t half-width); the mean alone for one value."""
    if stats.n == 0:
        return DASH
    if stats.n < 2:
        return f"{stats.mean:.2f}"
    return f"{stats.mean:.2f} ± {stats.half_width:.2f}"
