"""Statistics a reviewer accepts, for confirmed comparisons: per-arm mean, std and a 95 %
Student-t interval; paired differences (same seeds in both arms) with their interval, the
paired t-test and the Wilcoxon signed-rank test beside it. scipy does the distributions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


@dataclass(frozen=True)
class ArmStats:
    """One arm's values over seeds (accuracy in %)."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan for n < 2
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


@dataclass(frozen=True)
class PairedDiff:
    """arm - baseline over the seeds both have, in points."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_ttest: float  # two-sided paired t-test; nan when it cannot be computed
    p_wilcoxon: float  # two-sided Wilcoxon signed-rank; nan when it cannot be computed

    @property
    def significant(self) -> bool:
        """The 95 % interval excludes 0 (equivalently p_ttest < 0.05)."""
        return self.n >= 2 and (self.ci_low > 0 or self.ci_high < 0)


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its two-sided 95 % Student-t interval."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = _std(values)
    half = stats.t.ppf(1 - ALPHA / 2, df=n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


def _std(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return math.nan
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def arm_stats(values: Sequence[float]) -> ArmStats:
    mean, low, high = t_interval(values)
    return ArmStats(len(values), mean, _std(values), low, high)


def paired_diff(arm: Mapping[int, float], baseline: Mapping[int, float]) -> PairedDiff:
    """Differences over the seeds present in both (seed -> value)."""
    from scipy import stats

    seeds = sorted(set(arm) & set(baseline))
    diffs = [arm[s] - baseline[s] for s in seeds]
    mean, low, high = t_interval(diffs)
    p_t = p_w = math.nan
    if len(diffs) >= 2:
        if _std(diffs) == 0:
            # Every pair differs by the same amount: no spread, the t statistic is infinite.
            p_t = 1.0 if mean == 0 else 0.0
            low = high = mean
        else:
            p_t = float(
                stats.ttest_rel([arm[s] for s in seeds], [baseline[s] for s in seeds]).pvalue
            )
        # Wilcoxon has nothing to rank when every pair ties: no evidence of a difference.
        p_w = float(stats.wilcoxon(diffs).pvalue) if any(d != 0 for d in diffs) else 1.0
    return PairedDiff(len(diffs), mean, low, high, p_t, p_w)


@dataclass(kw_only=True)
class SeededArm:
    """One configuration's accuracies (%) by seed on val and test: a row of the seeds table
    (kdsweep.multirun.seeds_table) and of the confirmed comparison (kdsweep.results)."""

    val: dict[int, float] = field(default_factory=dict)
    test: dict[int, float] = field(default_factory=dict)

    @property
    def val_stats(self) -> ArmStats:
        return arm_stats(list(self.val.values()))

    @property
    def test_stats(self) -> ArmStats:
        return arm_stats(list(self.test.values()))

    def diff(self, baseline: SeededArm, split: str) -> PairedDiff:
        """This arm minus ``baseline`` on ``split`` (val or test), over their shared seeds."""
        return paired_diff(getattr(self, split), getattr(baseline, split))


def verdict(diff: PairedDiff) -> str:
    """The words a headline may use for a paired difference."""
    if diff.n < 2:
        return "too few paired seeds to test"
    if not diff.significant:
        return "no significant difference"
    return "significantly better" if diff.mean > 0 else "significantly worse"
