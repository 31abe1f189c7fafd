"""Whether a difference in rate is within the noise: rate ratios with a bootstrap interval.

Each measurement carries the rates of the equal slices of its window (`rps_slices`). The ratio
of two sets of measurements is sum(new rps) / sum(old rps); its 95% interval comes from
resampling every measurement's slices. A ratio whose interval holds 1 is within the noise: no
change can be told. The converse does not hold: the slices see the noise within a window, not
the larger noise between two runs (another server process, another database file), so a ratio
outside its interval is not yet a significant change; only repeated runs can say that.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.report.aggregate import display_order
from bench.results import EndpointResult, Result
from bench.stats import bootstrap_interval


@dataclass(frozen=True)
class Change:
    """new / old rate, with its 95% interval when every measurement has slices."""

    ratio: float
    low: float | None = None
    high: float | None = None

    @property
    def within_noise(self) -> bool | None:
        """True if the interval holds 1, False if not, None without an interval."""
        if self.low is None or self.high is None:
            return None
        return self.low <= 1 <= self.high


def _slices(ep: EndpointResult) -> list[float] | None:
    return ep.rps_slices if ep.rps_slices and len(ep.rps_slices) >= 2 else None


def rate_change(old: Sequence[EndpointResult], new: Sequence[EndpointResult]) -> Change | None:
    """sum(new rps) / sum(old rps); None if there is nothing to divide by."""
    old_rps = sum(ep.rps for ep in old)
    if not old or not new or old_rps == 0:
        return None
    ratio = sum(ep.rps for ep in new) / old_rps
    groups = [_slices(ep) for ep in (*old, *new)]
    if any(g is None for g in groups):
        return Change(ratio)
    n_old = len(old)

    def resampled_ratio(samples: list[list[float]]) -> float:
        base = sum(statistics.fmean(s) for s in samples[:n_old])
        return sum(statistics.fmean(s) for s in samples[n_old:]) / base if base else 0.0

    low, high = bootstrap_interval([g for g in groups if g is not None], resampled_ratio)
    return Change(ratio, low, high)


@dataclass(frozen=True)
class RunPair:
    """The newest result of a cell and the result of that cell before it."""

    old: Result
    new: Result


def latest_changes(results: Iterable[Result]) -> list[RunPair]:
    """For each cell with ok results from two or more runs: its newest result and the one before
    (by start time), in display order."""
    by_cell: dict[str, list[Result]] = {}
    for result in results:
        if result.status == "ok":
            by_cell.setdefault(result.cell.name, []).append(result)
    pairs = []
    for runs in by_cell.values():
        if len(runs) >= 2:
            old, new = sorted(runs, key=lambda r: (r.started_at, r.run_id))[-2:]
            pairs.append(RunPair(old, new))
    order = {id(r): i for i, r in enumerate(display_order(p.new for p in pairs))}
    return sorted(pairs, key=lambda p: order[id(p.new)])
