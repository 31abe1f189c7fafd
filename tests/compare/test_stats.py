"""bench.compare.change, the one test of a change (scipy's bootstrap, permutation test and
Benjamini-Hochberg), and bench.compare.stats, the limits scipy does not compute: on values whose
answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.compare.change import Figure, assess, interval, measure_change
from bench.compare.stats import detectable_pct, fewest_figures, smallest_p


def mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def ratio_of_sums(wrk: np.ndarray, engine: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(engine, axis=axis) / np.sum(wrk, axis=axis)


def test_interval_brackets_the_statistic_and_is_repeatable() -> None:
    values = [10.0, 11.0, 9.0, 10.5, 9.5, 10.2, 9.8, 10.0]
    low, high = interval([values], mean)
    assert 9.5 < low < 10.0 < high < 10.5
    assert (low, high) == interval([values], mean)  # seeded
    assert interval([[5.0, 5.0]], mean) == (5.0, 5.0)


def test_a_paired_interval_keeps_each_round_together() -> None:
    # each round's two values drift together (the server's speed), their ratio stays 0.9
    wrk = [1000.0, 1500.0, 800.0, 1200.0, 600.0, 1400.0]
    engine = [0.9 * w for w in wrk]
    paired = interval([wrk, engine], ratio_of_sums, paired=True)
    assert paired == pytest.approx((0.9, 0.9))
    low, high = interval([wrk, engine], ratio_of_sums)  # rounds torn apart: the drift shows
    assert low < 0.8 and high > 1.0


def test_smallest_p_is_what_an_exact_permutation_test_gives_at_best() -> None:
    assert smallest_p(3, 3) == pytest.approx(0.1)
    assert smallest_p(4, 3) == pytest.approx(2 / 35)
    assert smallest_p(1, 1) == 1.0
    # the floor is scipy's p-value of two sides that do not overlap at all
    apart = scipy_stats.permutation_test(
        ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]),
        lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        permutation_type="independent",
        vectorized=True,
    )
    assert apart.pvalue == pytest.approx(smallest_p(4, 4)) == pytest.approx(2 / 70)


def test_fewest_figures_that_can_pass_the_correction() -> None:
    # 4 a side: p ≥ 2/70; among 20 tests the k-th smallest must be ≤ k · 0.05 / 20
    assert fewest_figures(4, 4, 20, 0.05) == math.ceil(2 / 70 * 20 / 0.05) == 12
    k = fewest_figures(4, 4, 20, 0.05)
    adjusted = scipy_stats.false_discovery_control([2 / 70] * k + [1.0] * (20 - k))
    assert adjusted[0] < 0.05  # k figures at the floor pass
    adjusted = scipy_stats.false_discovery_control([2 / 70] * (k - 1) + [1.0] * (21 - k))
    assert adjusted[0] >= 0.05  # one fewer does not
    assert fewest_figures(10, 10, 5, 0.05) == 1
    assert fewest_figures(4, 4, 0, 0.05) == 0


def test_detectable_change_shrinks_with_repetitions() -> None:
    z = scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)
    assert detectable_pct(2.0, 4) == pytest.approx(z * 2.0 * math.sqrt(2 / 4))
    assert detectable_pct(2.0, 16) == pytest.approx(detectable_pct(2.0, 4) / 2)


def test_measure_change_exact_p_and_what_is_not_tested() -> None:
    slower = Figure("c", "GET flow c=1", "rps", [100, 101, 99, 100], [80, 81, 79, 80])
    measure_change(slower)
    assert slower.ratio == pytest.approx(0.8)
    assert slower.p_value == pytest.approx(2 / 70)  # exact: every relabelling tried
    assert slower.low is not None and slower.high is not None
    assert slower.low <= 0.8 <= slower.high < 0.85
    same = Figure("c", "GET flow c=1", "p50", [1.5] * 4, [1.5] * 4)
    measure_change(same)  # nothing varies: not tested
    assert same.ratio == 1.0 and same.p_value is None and same.low == same.high == 1.0
    once = Figure("c", "GET flow c=1", "rps", [100.0], [80.0])
    measure_change(once)  # one value a side: the ratio alone
    assert once.ratio == pytest.approx(0.8) and once.p_value is None and once.low is None
    nothing = Figure("c", "GET flow c=1", "rps", [0.0, 0.0], [5.0, 6.0])
    measure_change(nothing)
    assert math.isnan(nothing.ratio)


def test_too_few_values_for_any_test_to_tell() -> None:
    def figure(before: int, after: int) -> Figure:
        return Figure("c", "x", "rps", [1.0] * before, [1.0] * after)

    assert figure(3, 3).too_few and figure(4, 3).too_few
    assert not figure(4, 4).too_few and not figure(5, 3).too_few


def test_assess_corrects_every_figure_tested_as_one_family() -> None:
    moved = Figure("c", "moved", "rps", [100, 101, 99, 100], [80, 81, 79, 80])
    noise = [
        Figure("c", f"still {i}", "rps", [100, 101, 99, 100], [100.5, 99.5, 101, 99])
        for i in range(3)
    ]
    constant = [Figure("c", f"constant {i}", "p50", [1.0] * 4, [1.0] * 4) for i in range(10)]
    assess([moved, *noise, *constant])
    # four tested: the moved one's 2/70 times 4 / 1; the constant ones are no tests at all
    assert moved.p_adjusted == pytest.approx(4 * 2 / 70)
    assert not moved.significant
    assert all(f.p_adjusted is None and not f.significant for f in constant)
    alone = Figure("c", "moved", "rps", [100, 101, 99, 100], [80, 81, 79, 80])
    assess([alone, *constant])
    assert alone.p_adjusted == pytest.approx(2 / 70) and alone.significant
