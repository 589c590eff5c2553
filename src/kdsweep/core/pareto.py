"""Pareto geometry on plain vectors, every objective minimized: dominance, the
non-dominated points, a few points spread over the front, and the hypervolume.

Here, at the ground floor, because two layers use it: the sweep's confirmation stage picks
the front points it retrains (kdsweep.sweep.arms), and the results read the search's and
the confirmed front (kdsweep.results.front). A caller turns a maximized objective
(accuracy) into a minimized one by negating it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Vector = Sequence[float]


def dominates(a: Vector, b: Vector) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one (all minimized)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def non_dominated(points: Sequence[Vector]) -> list[int]:
    """The indices of the points no other point dominates, in their given order (equal
    points all stay: none dominates the other)."""
    return [
        i
        for i, p in enumerate(points)
        if not any(dominates(q, p) for j, q in enumerate(points) if j != i)
    ]


def spread(costs: Sequence[Vector], k: int, first: Sequence[int] = ()) -> list[int]:
    """At most ``k`` indices of ``costs`` spread over them: the indices in ``first``, then
    each time the point farthest from those already picked (max-min distance), ties to
    the lower index. Each cost is scaled to [0, 1] over the points, on a log scale where
    every value is > 0 (sizes grow by factors: widths 4, 8, 16 are evenly spaced)."""
    if k < 1 or not costs:
        return []
    scaled = _unit_scaled(costs)
    picked = list(dict.fromkeys(i for i in first if 0 <= i < len(costs)))[:k]
    if not picked:
        picked = [0]
    while len(picked) < min(k, len(costs)):
        rest = [i for i in range(len(costs)) if i not in picked]
        # Rounded: equal gaps on a log scale differ in the last bits, and ties go by index.
        farthest = max(
            rest,
            key=lambda i: (round(min(math.dist(scaled[i], scaled[j]) for j in picked), 9), -i),
        )
        picked.append(farthest)
    return picked


def _unit_scaled(costs: Sequence[Vector]) -> list[list[float]]:
    columns = list(zip(*costs, strict=True))
    out_columns = []
    for column in columns:
        values = [math.log(v) for v in column] if all(v > 0 for v in column) else list(column)
        low, high = min(values), max(values)
        span = high - low
        out_columns.append([(v - low) / span if span > 0 else 0.0 for v in values])
    return [list(row) for row in zip(*out_columns, strict=True)] if out_columns else []


def hypervolume(points: Sequence[Vector], reference: Vector) -> float:
    """The volume the points dominate up to ``reference`` (all objectives minimized); a
    point not strictly better than the reference in every objective adds nothing. Exact,
    by slicing along the last objective (fine for the tens of points and 2-4 objectives
    of a sweep's front)."""
    inside = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    return _volume([inside[i] for i in non_dominated(inside)], tuple(reference))


def _volume(points: list[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in points)
    if len(reference) == 2:
        # Sorted by the first objective, the front's second objective falls: a staircase.
        area, ceiling = 0.0, reference[1]
        for x, y in sorted(points):
            if y < ceiling:
                area += (reference[0] - x) * (ceiling - y)
                ceiling = y
        return area
    # Slabs between consecutive values of the last objective: each slab's cross-section is
    # the (n-1)-D hypervolume of the points at or below it.
    ordered = sorted(points, key=lambda p: p[-1])
    total = 0.0
    for i, point in enumerate(ordered):
        top = ordered[i + 1][-1] if i + 1 < len(ordered) else reference[-1]
        if top > point[-1]:
            below = [p[:-1] for p in ordered[: i + 1]]
            below = [below[j] for j in non_dominated(below)]
            total += _volume(below, reference[:-1]) * (top - point[-1])
    return total
