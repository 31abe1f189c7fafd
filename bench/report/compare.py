"""Whether a difference in rate is more than noise.

Within one pair of results: each measurement carries the rates of the equal slices of its window
(`rps_slices`). The ratio of two sets of measurements is sum(new rps) / sum(old rps); its 95%
interval comes from resampling every measurement's slices. A ratio whose interval holds 1 is
within the noise: no change can be told. The converse does not hold: the slices see the noise
within a window, not the larger noise between two runs (another server process, another
database file), so a ratio outside its interval is not yet a significant change.

Between repeated runs (a baseline and the runs compared with it): each run gives one value per
figure, and a permutation test on those values says whether the difference is significant. That
is the test that sees the noise between runs; it needs at least MIN_RUNS runs a side.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.report.aggregate import display_order
from bench.results import EndpointResult, Result
from bench.stats import bootstrap_interval, permutation_p_value


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


def _ok_by_cell(results: Iterable[Result]) -> dict[str, list[Result]]:
    by_cell: dict[str, list[Result]] = {}
    for result in results:
        if result.status == "ok":
            by_cell.setdefault(result.cell.name, []).append(result)
    return by_cell


def latest_changes(results: Iterable[Result]) -> list[RunPair]:
    """For each cell with ok results from two or more runs: its newest result and the one before
    (by start time), in display order."""
    pairs = []
    for runs in _ok_by_cell(results).values():
        if len(runs) >= 2:
            old, new = sorted(runs, key=lambda r: (r.started_at, r.run_id))[-2:]
            pairs.append(RunPair(old, new))
    order = {id(r): i for i, r in enumerate(display_order(p.new for p in pairs))}
    return sorted(pairs, key=lambda p: order[id(p.new)])


# Runs a side needs before a difference can be tested: with 3 the smallest p is 0.1.
MIN_RUNS = 4
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class RunsChange:
    """Mean rate over the new runs / mean over the baseline runs, with the two-sided p-value of
    a permutation test on the runs' rates (None when a side has fewer than MIN_RUNS runs)."""

    ratio: float
    p_value: float | None

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else self.p_value < SIGNIFICANCE


def runs_change(old: Sequence[float], new: Sequence[float]) -> RunsChange | None:
    """Compare one figure (e.g. an endpoint's rps) measured once per run on each side."""
    if not old or not new or statistics.fmean(old) == 0:
        return None
    ratio = statistics.fmean(new) / statistics.fmean(old)
    p_value = None
    if min(len(old), len(new)) >= MIN_RUNS:
        p_value = permutation_p_value(old, new)
    return RunsChange(ratio, p_value)


@dataclass(frozen=True)
class CellRuns:
    """The ok results of one cell in the baseline and in the results compared with it."""

    cell: str
    old: list[Result]
    new: list[Result]


def baseline_groups(baseline: Iterable[Result], results: Iterable[Result]) -> list[CellRuns]:
    """Every cell with ok results on both sides, in display order."""
    old = _ok_by_cell(baseline)
    new = _ok_by_cell(r for r in display_order(results) if r.cell.name in old)
    return [CellRuns(cell, old[cell], runs) for cell, runs in new.items()]
