"""A figure's trend over a soak's windows: the least-squares line through (hours, value), the
95% interval of its slope (Student's t on n - 2 degrees of freedom, scipy.stats.linregress),
and what the interval lets one say: it grows, it shrinks, or no trend can be told from noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy import stats

Verdict = Literal["grows", "shrinks", "no trend", "unsure"]
# Fewer windows than this give no interval worth the name (n - 2 degrees of freedom).
MIN_POINTS = 3


@dataclass(frozen=True)
class Trend:
    """The slope of one figure, per hour, with its 95% interval (None with too few points)."""

    per_hour: float
    low: float | None
    high: float | None
    start: float  # the line at the first window
    points: int

    @property
    def verdict(self) -> Verdict:
        """'grows' or 'shrinks' when the interval excludes 0, 'no trend' when it holds 0,
        'unsure' without an interval."""
        if self.low is None or self.high is None:
            return "unsure"
        if self.low > 0:
            return "grows"
        if self.high < 0:
            return "shrinks"
        return "no trend"


def trend(points: Sequence[tuple[float, float | None]]) -> Trend | None:
    """The trend of (seconds, value) points, those without a value left out; None with fewer
    than two or when time does not move."""
    kept = [(t / 3600, v) for t, v in points if v is not None and math.isfinite(v)]
    if len(kept) < 2 or len({t for t, _ in kept}) < 2:
        return None
    hours, values = zip(*kept, strict=True)
    fit = stats.linregress(hours, values)
    low = high = None
    if len(set(values)) == 1:  # a figure that never moved (linregress has no error for it)
        low = high = 0.0
    elif len(kept) >= MIN_POINTS:
        half = stats.t.ppf(0.975, len(kept) - 2) * fit.stderr
        low, high = fit.slope - half, fit.slope + half
    return Trend(
        per_hour=float(fit.slope),
        low=None if low is None else float(low),
        high=None if high is None else float(high),
        start=float(fit.intercept + fit.slope * hours[0]),
        points=len(kept),
    )
