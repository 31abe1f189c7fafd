"""Did a figure change? The one test of it, for `compare` (two sides of repetitions) and the
report's baseline (two sides of runs, each its repetitions merged).

A figure's change is mean(after) / mean(before); its 95% interval comes from resampling the
values of each side (scipy.stats.bootstrap), its p-value from a permutation test of the
difference of the means (scipy.stats.permutation_test, exact for the few values a side has).
Whole repetitions or runs are resampled, not requests: requests of one run share its server
process and database, and the noise between runs is larger than within one. Every p-value of a
comparison is then corrected for the many tests made at once (Benjamini-Hochberg,
scipy.stats.false_discovery_control), so that testing ~100 figures does not find ~5 changes in
noise; a figure is significant when its corrected p-value is below SIGNIFICANCE. The correction
is weighted (Genovese, Roeder and Wasserman 2006: each p-value divided by its weight, the
weights averaging 1): the cells' totals get TOTAL_SHARE of the whole. The total is the
comparison's first question and its most precise figure (over every endpoint: ±7% at 6 rounds
together where an endpoint is ±15-18%); with equal weights, 18 noisy endpoints raised its bar to
0.05/19 and a 12% slowdown whose interval left zero went unflagged. Alone, one total now passes
at p < 0.04; every other figure (rates, latencies) shares the rest, and once every total has
passed, their share falls back to the rest (as Wiens' fallback procedure passes on the level of
a rejected hypothesis): every figure is then corrected unweighted, as before, so a change that
shows everywhere is still named everywhere.

Two servers measured in one run (`compare RUN --before A --after B`) are paired: repetition k
of each ran in round k, minutes apart at most, so each round's ratio after/before holds what
drifts between rounds (the machine's speed) the same on both sides. The change is then the
geometric mean of the per-round ratios, and its interval and p-value come from a one-sample
t-test of their logarithms (scipy.stats.ttest_1samp). Not an exact sign-flip permutation test,
as the unpaired figures' is: with the 4-8 rounds a matrix runs, its smallest p-value (2/2^n:
0.125 at 4 rounds, 0.031 at 6) would leave the correction nothing to pass. A ratio's logarithm
is near-normal; a figure with a value of 0 in some round has no log ratio and is tested
unpaired.

Instructions (a --cost cell's figure) are tested differently, by Welch's t-test
(scipy.stats.ttest_ind, unequal variances) with its interval for the difference of the means,
as a ratio: a count is a sum over many requests of nearly deterministic work, near-normal; a
permutation test of 3 values a side could never go below p = 0.1. Its samples are each fresh
server's mean when each side has two or more (cost repetitions, `--repeat`): two fresh servers
of the same code differ by 0.4-1.4% (the design notes' A/A), more than the 0.03-0.4% between the
blocks of one server, so blocks pooled over servers would call that difference a change. With
one server a side, its counted blocks are the samples: the test then cannot see how much two
servers differ, and a gate's threshold must sit above it (`compare --aa` measures it).

A figure whose values are all equal, on both sides, is not tested: no test could find anything
in it, and its p of 1 would only raise the bar for the others. Leaving it out keeps the
correction's guarantee, because whether every value is equal does not depend on which side
each came from (independent filtering).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats

from bench.compare.metrics import TOTAL
from bench.compare.stats import smallest_p

SIGNIFICANCE = 0.05
CONFIDENCE = 0.95
RESAMPLES = 2000
# Relabellings a permutation test tries: all of them when there are no more (exact).
PERMUTATIONS = 20_000
# Of the correction's budget, the share the cells' totals get (the module says why); the other
# figures share the rest.
TOTAL_SHARE = 0.8


def interval(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    paired: bool = False,
    seed: int = 0,
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of `statistic(*samples, axis=-1)` (vectorized, as
    scipy.stats.bootstrap calls it): each sample resampled with replacement independently of
    the others, or, `paired`, all with the same indices (the values of one round stay together).
    Seeded: the same values always give the same interval. Each sample needs two values."""
    found = stats.bootstrap(
        tuple(np.asarray(s, dtype=float) for s in samples),
        statistic,
        paired=paired,
        vectorized=True,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(found.low), float(found.high)


@dataclass
class Figure:
    """One figure of one cell on both sides, and what testing it found."""

    cell: str
    name: str
    metric: str  # a name of bench.compare.metrics.METRICS
    before: list[float]
    after: list[float]
    ratio: float = math.nan
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    broken: list[str] = field(default_factory=list)  # the gate's rules it breaks
    per_block: bool = False  # the values are instructions: Welch's t-test (see the module)
    # per_block, two or more servers a side: each value is one server's mean, not a block
    per_server: bool = False
    paired: bool = False  # before[k] and after[k] ran in one round: the paired test
    # paired: the smallest change, %, its test finds 4 times in 5 at α 0.05 with these rounds
    detectable_pct: float | None = None

    @property
    def pairs(self) -> bool:
        """Whether the paired test applies: rounds on both sides, every value above 0."""
        return (
            self.paired
            and not self.per_block
            and len(self.before) == len(self.after)
            and min(self.before + self.after, default=0) > 0
        )

    @property
    def test(self) -> Literal["paired", "servers", "blocks", "unpaired"]:
        """Which test it gets: paired rounds, cost servers' means or one server's blocks a
        side (Welch), or unpaired repetitions."""
        if self.pairs:
            return "paired"
        if self.per_block:
            return "servers" if self.per_server else "blocks"
        return "unpaired"

    @property
    def change_pct(self) -> float:
        return 100 * (self.ratio - 1)

    @property
    def significant(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < SIGNIFICANCE

    @property
    def too_few(self) -> bool:
        """No test of this many values a side can be significant (3 and 3: p ≥ 0.1)."""
        if self.per_block or self.pairs:
            return min(len(self.before), len(self.after)) < 2
        return smallest_p(len(self.before), len(self.after)) >= SIGNIFICANCE


def _mean_ratio(before: np.ndarray, after: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(after, axis=axis) / np.mean(before, axis=axis)


def _mean_difference(before: np.ndarray, after: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(after, axis=axis) - np.mean(before, axis=axis)


def measure_change(figure: Figure, seed: int = 0) -> None:
    """Fill in the ratio, its interval and the raw p-value: the ratio alone with fewer than 2
    values a side, and no p-value when every value is equal (not tested)."""
    before, after = np.asarray(figure.before, dtype=float), np.asarray(figure.after, dtype=float)
    if not before.size or not after.size or before.mean() == 0:
        return
    figure.ratio = float(after.mean() / before.mean())
    if min(len(before), len(after)) < 2:
        return
    if np.ptp(np.concatenate([before, after])) == 0:
        figure.low = figure.high = figure.ratio
        return
    if figure.per_block:
        _welch(figure, before, after)
        return
    if figure.pairs:
        _paired(figure, before, after)
        return
    figure.low, figure.high = interval((before, after), _mean_ratio, seed=seed)
    figure.p_value = float(
        stats.permutation_test(
            (before, after),
            _mean_difference,
            permutation_type="independent",
            vectorized=True,
            n_resamples=PERMUTATIONS,
            alternative="two-sided",
            rng=np.random.default_rng(seed),
        ).pvalue
    )


def _welch(figure: Figure, before: np.ndarray, after: np.ndarray) -> None:
    """Welch's t-test of the difference of the means, its 95% interval as a ratio."""
    with warnings.catch_warnings():  # a side of equal blocks: scipy warns of its precision
        warnings.simplefilter("ignore", RuntimeWarning)
        found = stats.ttest_ind(after, before, equal_var=False)
    difference = found.confidence_interval(CONFIDENCE)
    figure.low = float(1 + difference.low / before.mean())
    figure.high = float(1 + difference.high / before.mean())
    figure.p_value = float(found.pvalue)


def _paired(figure: Figure, before: np.ndarray, after: np.ndarray) -> None:
    """The geometric mean of the per-round ratios, with the 95% interval and p-value of a
    one-sample t-test of their logarithms; no p-value when every round's ratio is the same
    (no spread to test against)."""
    logs = np.log(after) - np.log(before)
    figure.ratio = float(np.exp(logs.mean()))
    if np.ptp(logs) == 0:
        figure.low = figure.high = figure.ratio
        return
    n = len(logs)
    # the rounds' own spread: a paired t-test's power, 80% at α 0.05 (two-sided)
    reach = (stats.t.ppf(1 - SIGNIFICANCE / 2, n - 1) + stats.t.ppf(0.8, n - 1)) * logs.std(ddof=1)
    figure.detectable_pct = float(100 * (np.exp(reach / np.sqrt(n)) - 1))
    found = stats.ttest_1samp(logs, 0.0)
    difference = found.confidence_interval(CONFIDENCE)
    figure.low, figure.high = float(np.exp(difference.low)), float(np.exp(difference.high))
    figure.p_value = float(found.pvalue)


def weights(figures: Sequence[Figure]) -> list[float]:
    """Each figure's weight in the correction, averaging 1: the totals share TOTAL_SHARE of it
    and the other figures the rest; all 1 when there are only totals or none."""
    n = len(figures)
    totals = sum(f.name == TOTAL for f in figures)
    if totals in (0, n):
        return [1.0] * n
    return [
        TOTAL_SHARE * n / totals if f.name == TOTAL else (1 - TOTAL_SHARE) * n / (n - totals)
        for f in figures
    ]


def correct(figures: Iterable[Figure]) -> None:
    """Weighted Benjamini-Hochberg over every figure tested (those with a p-value), then the
    fallback: when every total passed, every figure is corrected unweighted too, and keeps the
    smaller of its two corrected p-values."""
    tested = [f for f in figures if f.p_value is not None]
    if not tested:
        return
    raw = [f.p_value for f in tested]
    weighted = [min(1.0, p / w) for p, w in zip(raw, weights(tested), strict=True)]
    # never below its own p-value: a weight lets a figure through sooner, never on its own p of
    # 0.3 because many others changed
    adjusted = [
        max(float(p), r)
        for p, r in zip(stats.false_discovery_control(weighted, method="bh"), raw, strict=True)
    ]
    totals = [p for f, p in zip(tested, adjusted, strict=True) if f.name == TOTAL]
    if totals and all(p < SIGNIFICANCE for p in totals):
        unweighted = stats.false_discovery_control(raw, method="bh")
        adjusted = [min(a, float(u)) for a, u in zip(adjusted, unweighted, strict=True)]
    for f, p in zip(tested, adjusted, strict=True):
        f.p_adjusted = p


def assess(figures: Sequence[Figure]) -> None:
    """Test every figure and correct them all as one family: what "did it change?" means."""
    for f in figures:
        measure_change(f)
    correct(figures)
