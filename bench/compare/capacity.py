"""A sweep's knee: the highest offered rate an endpoint kept (bench.config.objectives says
what a sweep and its objective are)."""

from __future__ import annotations

from bench.results import SweepPoint

# Past the knee latency only grows (an open model queues what the server cannot take) and each
# further rate costs a whole window: a sweep stops after this many misses in a row.
STOP_AFTER_MISSES = 2


def knee(points: list[SweepPoint]) -> float | None:
    """The highest offered rate of the unbroken run of points, from the lowest, that kept the
    objective and held their rate; None when the lowest did not."""
    best = None
    for point in sorted(points, key=lambda p: p.offered_rps):
        if not point.kept:
            break
        best = point.offered_rps
    return best
