"""What scipy does not give: the limits a number of values sets on a test before any is measured.

The tests themselves are scipy's (`bench.compare.change`: scipy.stats.bootstrap,
permutation_test, false_discovery_control); these say how small a p-value a permutation test
can reach with so few values a side, how many figures must reach it to pass the correction,
and how small a change such a test detects.
"""

from __future__ import annotations

import math

from scipy import stats


def smallest_p(before: int, after: int) -> float:
    """The smallest two-sided p-value an exact permutation test of the difference of means can
    give with these many values a side: the two most extreme of C(n, before) splits.

    scipy.stats.permutation_test computes the p-value of data; this floor, set by the sizes
    alone, is what tells beforehand that 3 runs a side (0.1) can never be significant."""
    return min(1.0, 2 / math.comb(before + after, before))


def fewest_figures(before: int, after: int, tests: int, q: float) -> int:
    """How many of `tests` figures must all reach `smallest_p` before Benjamini-Hochberg at
    level `q` lets them through: it passes the k smallest p-values when the k-th is ≤ k·q / tests.

    scipy.stats.false_discovery_control adjusts given p-values; it does not invert the rule."""
    if not tests:
        return 0
    return max(1, math.ceil(smallest_p(before, after) * tests / q))


def detectable_pct(cv_pct: float, size: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest change of a mean, % of it, that a two-sided test at `alpha` with `size`
    values a side finds with probability `power`, for values varying by `cv_pct` (coefficient of
    variation, %): (z_{1-alpha/2} + z_power) · CV · sqrt(2 / size), the normal approximation.

    scipy has no power analysis that solves for the effect (scipy.stats.power simulates the
    power of a given one; statsmodels' solve_power does, a dependency one line does not earn)."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return float(z * cv_pct * math.sqrt(2 / size))
