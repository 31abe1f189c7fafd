"""How sure a figure is: percentile bootstrap intervals (no distribution assumed).

A benchmark's samples (rates of short slices of a window, rounds of two tools) are few and not
normal, so the interval comes from resampling them rather than from a t table.
"""

from __future__ import annotations

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
