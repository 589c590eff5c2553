"""The confirmation statistics against scipy and hand-computed values on fixed numbers."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from kdsweep.core.stats import arm_stats, paired_diff, t_interval, verdict

KD = {1: 97.2, 2: 96.4, 3: 98.1, 4: 97.5, 5: 96.9}
CE = {1: 98.0, 2: 97.9, 3: 98.6, 4: 97.7, 5: 98.3}


def test_arm_interval_is_students_t() -> None:
    values = list(KD.values())
    s = arm_stats(values)
    assert s.n == 5 and s.mean == pytest.approx(97.22)
    assert s.std == pytest.approx(math.sqrt(1.628 / 4))  # sample std (ddof=1), by hand
    # mean +- t(0.975, 4) * std / sqrt(5), t = 2.776445
    half = 2.776445 * s.std / math.sqrt(5)
    assert (s.ci_low, s.ci_high) == pytest.approx((97.22 - half, 97.22 + half), abs=1e-4)
    low, high = stats.t.interval(0.95, 4, loc=s.mean, scale=stats.sem(values))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))


def test_paired_difference_matches_scipy() -> None:
    d = paired_diff(KD, CE)
    diffs = [KD[s] - CE[s] for s in sorted(KD)]
    assert d.n == 5 and d.mean == pytest.approx(sum(diffs) / 5)
    assert d.p_ttest == pytest.approx(stats.ttest_rel(list(KD.values()), list(CE.values())).pvalue)
    assert d.p_wilcoxon == pytest.approx(stats.wilcoxon(diffs).pvalue)
    mean, low, high = t_interval(diffs)
    assert (d.ci_low, d.ci_high) == pytest.approx((low, high))
    assert d.ci_high < 0 and d.significant and verdict(d) == "significantly worse"


def test_pairs_only_shared_seeds_and_says_when_nothing_holds() -> None:
    d = paired_diff({1: 90.0, 2: 91.0, 9: 99.0}, {1: 90.5, 2: 90.0, 3: 50.0})
    assert d.n == 2 and d.mean == pytest.approx(0.25)
    assert not d.significant and verdict(d) == "no significant difference"
    one = paired_diff({1: 90.0}, {1: 80.0})
    assert one.n == 1 and math.isnan(one.p_ttest) and verdict(one) == "too few paired seeds to test"


def test_identical_arms_and_constant_shifts() -> None:
    same = paired_diff(CE, CE)
    assert same.mean == 0 and same.p_ttest == 1.0 and same.p_wilcoxon == 1.0
    assert not same.significant
    shifted = paired_diff({s: v + 1 for s, v in CE.items()}, CE)
    assert shifted.mean == pytest.approx(1.0) and shifted.significant
