"""How sure a figure is: bootstrap intervals and permutation tests (no distribution assumed).

A benchmark's samples (rates of short slices of a window, rounds of two tools, repeated runs) are
few and not normal, so intervals and p-values come from resampling them, not from t tables.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

SAMPLES = 2000
CONFIDENCE = 0.95


def bootstrap_interval(
    groups: Sequence[Sequence[T]],
    statistic: Callable[[list[list[T]]], float],
    samples: int = SAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The 95% interval of `statistic(groups)`: each group is resampled with replacement,
    independently of the others (keep paired values together as one item of one group).

    Seeded, so the same data always gives the same interval.
    """
    if not groups or any(not g for g in groups):
        raise ValueError("every group needs at least one value")
    rng = random.Random(seed)
    values = sorted(statistic([rng.choices(g, k=len(g)) for g in groups]) for _ in range(samples))
    tail = (1 - CONFIDENCE) / 2
    return values[int(tail * samples)], values[int((1 - tail) * samples) - 1]


# Labelings enumerated exactly up to this many; beyond, this many random ones.
PERMUTATIONS = 20_000


def permutation_p_value(old: Sequence[float], new: Sequence[float], seed: int = 0) -> float:
    """Two-sided p-value of the difference of the means of `old` and `new`, under the null
    hypothesis that the labels are exchangeable (a permutation test: no distribution assumed).

    Every relabelling is tried when there are at most PERMUTATIONS of them, else that many random
    ones (seeded). With 3 values a side the smallest p possible is 0.1; with 4, 0.029.
    """
    if not old or not new:
        raise ValueError("both sides need at least one value")
    values = [*old, *new]
    total, k = sum(values), len(old)
    observed = abs(sum(new) / len(new) - sum(old) / k)

    def extreme(chosen: Sequence[float]) -> bool:
        s = sum(chosen)
        # a float tolerance, so that ties with the observed split count as extreme
        return abs((total - s) / len(new) - s / k) >= observed - 1e-12 * max(1.0, observed)

    n = len(values)
    if math.comb(n, k) <= PERMUTATIONS:
        splits = [extreme(c) for c in itertools.combinations(values, k)]
        return sum(splits) / len(splits)
    rng = random.Random(seed)
    hits = sum(extreme(rng.sample(values, k)) for _ in range(PERMUTATIONS))
    return (hits + 1) / (PERMUTATIONS + 1)
