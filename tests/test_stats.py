"""bench.compare.stats: the bootstrap interval and the permutation test, on values with known
answers."""

from __future__ import annotations

import pytest

from bench.compare.stats import bootstrap_interval, permutation_p_value


def mean_of_first(groups: list[list[float]]) -> float:
    return sum(groups[0]) / len(groups[0])


def test_bootstrap_interval_brackets_the_statistic_and_is_repeatable() -> None:
    values = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0]
    low, high = bootstrap_interval([values], mean_of_first)
    assert 9.0 < low < 10.0 < high < 11.0
    assert (low, high) == bootstrap_interval([values], mean_of_first)  # seeded
    assert bootstrap_interval([[5.0, 5.0]], mean_of_first) == (5.0, 5.0)
    with pytest.raises(ValueError):
        bootstrap_interval([[]], mean_of_first)


def test_permutation_p_value_exact_for_small_samples() -> None:
    # fully separated sides: only the observed split (and its mirror) is as extreme
    assert permutation_p_value([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert permutation_p_value([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert permutation_p_value([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert permutation_p_value([1, 2, 3, 4], [1.1, 2.1, 2.9, 4.2]) > 0.5
    with pytest.raises(ValueError):
        permutation_p_value([], [1.0])


def test_permutation_p_value_sampled_for_large_samples() -> None:
    old = [float(x) for x in range(20)]
    assert permutation_p_value(old, [x + 10 for x in old]) < 0.01
    assert permutation_p_value(old, [x + 0.1 for x in old]) > 0.5
