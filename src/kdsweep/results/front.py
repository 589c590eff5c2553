"""The accuracy-vs-cost front of a search with costs, as searched and as confirmed: a pure
reader of the study and of its confirmation stage (kdsweep.sweep.confirm).

- the search's front: its completed trials no other dominates (Optuna's ``best_trials``,
  kdsweep.sweep.arms.front_trials), and its hypervolume (kdsweep.core.pareto);
- the confirmed front: every confirmed point (an arm ``front-<trial>``) with its costs,
  its test and val accuracy over the fresh paired seeds, the same student and recipe
  without the teacher (``ablation-<trial>``) and the paired gain; a point another
  confirmed point beats on mean val accuracy at no higher cost is marked dominated;
- the pick the report's first sentence names: the smallest confirmed student whose mean
  val accuracy is within ``front.tolerance`` points of the best one (val, never test: test
  stays unseen by every choice), and the words for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdsweep.core.formatting import DASH, mean_ci
from kdsweep.core.pareto import hypervolume, non_dominated
from kdsweep.core.stats import PairedDiff
from kdsweep.core.values import finite_number
from kdsweep.results.confirmed import (
    ArmResult,
    Confirmed,
    ci,
    gain_verdict,
    mean_vals,
    parts_text,
)
from kdsweep.sweep.arms import (
    FRONT_ABLATION_PREFIX,
    FRONT_PREFIX,
    cost_amount,
    cost_names,
    describe_costs,
    front_trials,
    is_multi_objective,
    minimized,
    trial_costs,
)
from kdsweep.sweep.confirm import TOLERANCE_ATTR

if TYPE_CHECKING:
    import optuna

DEFAULT_TOLERANCE = 1.0
#: How the report names each cost.
COST_WORDS = {"params": "parameters", "macs": "MACs", "latency_ms": "ms latency"}


def front_hypervolume(study: optuna.Study, reference: Sequence[float] | None = None) -> float:
    """The hypervolume of the search's front, every objective minimized (accuracy
    negated). ``reference``: a point in those terms (to compare two studies, give both the
    same one, e.g. (-0.0, largest cost x 1.1)); by default this study's nadir: accuracy 0
    and each cost 10 % above its largest on the front."""
    points = [minimized(study, t.values) for t in front_trials(study)]
    if not points:
        return 0.0
    if reference is None:
        reference = [0.0] + [max(p[i] for p in points) * 1.1 for i in range(1, len(points[0]))]
    return hypervolume(points, reference)


@dataclass
class ConfirmedPoint:
    """One point of the front, retrained on the confirmation's paired seeds."""

    trial: int  # the search trial it repeats
    key: str  # its arm: front-<trial>
    label: str
    costs: dict[str, float]
    kd: ArmResult
    ablation: ArmResult | None  # the same student and recipe without the teacher
    gain: PairedDiff | None  # kd - ablation, test accuracy, over their shared seeds
    mean_val: float | None = None  # over the seeds every point completed (the selection)
    dominated: bool = False
    alias: str = ""  # front-1 (the smallest) .. front-k


@dataclass
class ConfirmedFront:
    points: list[ConfirmedPoint]  # smallest first (by the costs in order)
    costs: list[str]
    tolerance: float
    pick: ConfirmedPoint | None = None  # the smallest within tolerance of the best val
    best_val: float | None = None
    teacher_params: float | None = None


def confirmed_front(
    study: optuna.Study,
    confirmed: Confirmed | None,
    confirm_study: optuna.Study | None,
) -> ConfirmedFront | None:
    """The confirmed front of a search with costs; None for a single-objective search or
    one without a confirmation of its front."""
    if confirmed is None or not is_multi_objective(study):
        return None
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    points = []
    for arm in confirmed.arms:
        if not arm.key.startswith(FRONT_PREFIX) or arm.trial not in by_number:
            continue
        trial = by_number[arm.trial]
        ablation = confirmed.arm(FRONT_ABLATION_PREFIX + arm.key[len(FRONT_PREFIX) :])
        gain = arm.diffs.get("ablation")  # kd - ablation, paired by confirmed_summary
        costs = trial_costs(study, trial) if trial.values else {}
        points.append(ConfirmedPoint(trial.number, arm.key, arm.label, costs, arm, ablation, gain))
    if not points:
        return None
    names = cost_names(study)
    points.sort(key=lambda p: (*_costs(p, names), p.trial))
    for rank, point in enumerate(points, start=1):
        point.alias = f"front-{rank}"
    attrs = confirm_study.user_attrs if confirm_study is not None else {}
    tolerance = finite_number(attrs.get(TOLERANCE_ATTR))
    front = ConfirmedFront(points, names, DEFAULT_TOLERANCE if tolerance is None else tolerance)
    _select(front)
    front.teacher_params = _teacher_params(study, confirmed_study=confirm_study)
    return front


def _select(front: ConfirmedFront) -> None:
    """Mean val accuracy over the seeds every point completed (each point's own where
    they share none), the dominated points, and the pick."""
    scored = [p for p in front.points if p.kd.val]
    if not scored:
        return
    means = mean_vals([p.kd for p in scored])
    vectors = [[-mean, *_costs(p, front.costs)] for p, mean in zip(scored, means, strict=True)]
    kept = non_dominated(vectors)
    for i, p in enumerate(scored):
        p.mean_val = means[i]
        p.dominated = i not in kept
    front.best_val = max(means)
    within = [p for p in scored if p.mean_val >= front.best_val - front.tolerance]  # type: ignore[operator]
    # Points are smallest first: the first within tolerance is the smallest (ties in cost
    # go to the higher val accuracy).
    front.pick = min(within, key=lambda p: (*_costs(p, front.costs), -p.mean_val))


def _costs(point: ConfirmedPoint, names: Sequence[str]) -> tuple[float, ...]:
    """The point's costs in the order of ``names``, a missing one infinite."""
    return tuple(point.costs.get(n, math.inf) for n in names)


def _teacher_params(study: optuna.Study, confirmed_study: optuna.Study | None) -> float | None:
    """The teacher's parameter count, as the runs that learned from it logged it."""
    for source in (confirmed_study, study):
        if source is None:
            continue
        for trial in source.get_trials(deepcopy=False):
            value = finite_number((trial.user_attrs.get("metrics") or {}).get("teacher_params"))
            if value is not None:
                return value
    return None


def size_text(front: ConfirmedFront, point: ConfirmedPoint) -> str:
    """``12,345 parameters (1.0 % of the teacher's 1,186,986)``: the point's first cost,
    against the teacher's where both are parameter counts."""
    if not front.costs:
        return ""
    name = front.costs[0]
    value = point.costs.get(name)
    if value is None:
        return ""
    text = f"{cost_amount(value)} {COST_WORDS.get(name, name)}"
    if name == "params" and front.teacher_params:
        share = 100 * value / front.teacher_params
        text += f" ({share:.3g} % of the teacher's {front.teacher_params:,.0f})"
    return text


def front_headline(front: ConfirmedFront, parts: Mapping[str, str] | None = None) -> str:
    """The report's first sentence: the smallest confirmed student within tolerance of the
    best confirmed val accuracy, its size against the teacher's, its test accuracy with a
    95 % interval, and whether the teacher helps at that size (the paired gain against
    the same student and recipe without it)."""
    pick = front.pick
    if pick is None:
        done = sum(p.kd.test_stats.n for p in front.points)
        points = len(front.points)
        return f"Front confirmation incomplete: {done} run(s) of its {points} point(s) done."
    who = f" ({parts_text(parts)})" if parts else ""
    test = pick.kd.test_stats
    if test.n >= 2:
        accuracy = f"{test.mean:.2f} % [95 % CI {test.ci_low:.2f}, {test.ci_high:.2f}]"
    else:
        accuracy = f"{test.mean:.2f} % (n={test.n})" if test.n else DASH
    unit = "point" if front.tolerance == 1 else "points"
    text = (
        f"Smallest confirmed student within {front.tolerance:g} {unit} of the best confirmed"
        f" val accuracy ({front.best_val:.2f} %): {pick.label}{who}, {size_text(front, pick)};"
        f" test accuracy {accuracy} over {test.n} fresh seed(s)"
    )
    gain = pick.gain
    if gain is None or gain.n < 2:
        n = 0 if gain is None else gain.n
        return text + f"; the teacher's gain needs 2 paired seeds with its ablation, {n} done."
    verdict = gain_verdict(gain, "the teacher", " at that size", "the same student without it")
    return (
        text + f"; against the same student and recipe without the teacher: {ci(gain)},"
        f" {gain.n} paired seeds: {verdict}."
    )


FRONT_HEAD = [
    "alias",
    "point",
    "costs",
    "seeds",
    "KD test acc % (mean ± 95 % CI)",
    "KD val acc %",
    "without teacher, test acc %",
    "gain of the teacher (test)",
    "front",
]


def front_rows(front: ConfirmedFront) -> list[list[str]]:
    """One row per confirmed point, smallest first."""
    rows = []
    for p in front.points:
        costs = describe_costs({n: p.costs[n] for n in front.costs if n in p.costs})
        without = mean_ci(p.ablation.test_stats) if p.ablation is not None else DASH
        gain = ci(p.gain) if p.gain is not None and p.gain.n else DASH
        status = "dominated" if p.dominated else "on the front"
        if p is front.pick:
            status += " (pick)"
        rows.append(
            [
                p.alias,
                p.label,
                costs,
                str(p.kd.test_stats.n),
                mean_ci(p.kd.test_stats),
                mean_ci(p.kd.val_stats),
                without,
                gain,
                status,
            ]
        )
    return rows
