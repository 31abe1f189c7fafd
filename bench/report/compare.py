"""Whether a difference in rate is more than noise, and how every table of ratios shows it.

Within one pair of results: each measurement carries the rates of the equal slices of its window
(`rps_slices` of an endpoint, `per_s_slices` of a scenario). The ratio of two sets of
measurements is sum(new rate) / sum(old rate); its 95% interval comes from resampling every
measurement's slices. A ratio whose interval holds 1 is within the noise: no change can be told.
The converse does not hold: the slices see the noise within a window, not the larger noise
between two runs (another server process, another database file), so a ratio outside its
interval is not yet a significant change.

Between repeated runs (a baseline and the runs compared with it): each run gives one value per
figure, and a permutation test on those values says whether the difference is significant. That
is the test that sees the noise between runs; it needs at least MIN_RUNS runs a side.

`ratio_value` shows a ratio (speedups, changes, the baseline; endpoints and scenarios alike):
its bound marks, "~" within the noise, and its tone; `RatioFlags` collects the notes a table of
them needs. `on_one_machine` keeps speedups to pairs measured on one machine, unless told not to.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.compare.stats import bootstrap_interval, permutation_p_value
from bench.report.aggregate import Pair, display_order, machine, series_key
from bench.report.document import Tone, Value
from bench.report.numbers import LOWER_BOUND, MISSING, SATURATED_MARK, UPPER_BOUND, fmt_ratio
from bench.results import Measurement, Result, ScenarioMeasurement

# A measurement with a rate: an endpoint's (rps) or a scenario's (completed per second).
Rated = Measurement | ScenarioMeasurement


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


def _rate(m: Rated) -> float:
    return m.per_s if isinstance(m, ScenarioMeasurement) else m.rps


def _slices(m: Rated) -> list[float] | None:
    slices = m.per_s_slices if isinstance(m, ScenarioMeasurement) else m.rps_slices
    return slices if slices and len(slices) >= 2 else None


def rate_change(old: Sequence[Rated], new: Sequence[Rated]) -> Change | None:
    """sum(new rate) / sum(old rate); None if there is nothing to divide by."""
    old_rate = sum(_rate(m) for m in old)
    if not old or not new or old_rate == 0:
        return None
    ratio = sum(_rate(m) for m in new) / old_rate
    groups = [_slices(m) for m in (*old, *new)]
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
    """For each cell with ok results from two or more runs of the same settings (one series,
    `series_key`: not a run at --preload 1000 against one at 100000): its newest result and
    the one before (by start time), in display order."""
    series: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        if result.status == "ok":
            series.setdefault(series_key(result), []).append(result)
    pairs = []
    for runs in series.values():
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


# -- how a ratio is shown ----------------------------------------------------------------------

# A ratio within this much of 1 is shown without a good/bad tone.
NEUTRAL_BAND = 0.05
WITHIN_NOISE = " ~"
NOISE_NOTE = (
    "~: within the noise, no change can be told: the 95% interval of the ratio, from resampling "
    "the rates of the ~0.5 s slices of each measurement window, holds 1×. A ratio without ~ is "
    "not therefore significant: the noise between two runs (a new server process, a new "
    "database) is larger than within a window. Two runs of the same server on a shared 2-core "
    "machine differed by 0.84×-1.32× on single endpoints and 1.02×-1.04× in totals: repeat runs "
    "before trusting a change."
)
RATIO_NOTE = (
    f"{LOWER_BOUND} / {UPPER_BOUND} / {SATURATED_MARK}: the load generator was saturated while "
    f"measuring the server named above the column ({LOWER_BOUND}: the ratio is at least this), "
    f"the one it is compared with ({UPPER_BOUND}: at most this) or both ({SATURATED_MARK}): the "
    "ratio is a bound, not a value."
)


def ratio_value(
    num: float | None,
    den: float | None,
    num_sat: bool,
    den_sat: bool,
    higher_is_better: bool,
    within_noise: bool | None = None,
) -> Value:
    """num / den as "1.23×", with a bound mark when a side was client-saturated and "~" when
    the difference is within the noise; no good/bad tone for differences within the noise."""
    if num is None or den is None or den == 0:
        return Value(MISSING)
    ratio = num / den
    bound = ""
    if num_sat != den_sat:
        # A saturated numerator is a lower bound, a saturated denominator makes an upper bound.
        bound = LOWER_BOUND if num_sat else UPPER_BOUND
    elif num_sat:
        bound = SATURATED_MARK
    tone: Tone = ""
    if within_noise:
        tone = "muted"
    elif ratio > 1 + NEUTRAL_BAND:
        tone = "good" if higher_is_better else "bad"
    elif ratio < 1 - NEUTRAL_BAND:
        tone = "bad" if higher_is_better else "good"
    text = (
        fmt_ratio(ratio) + SATURATED_MARK if bound == SATURATED_MARK else bound + fmt_ratio(ratio)
    )
    if within_noise:
        text += WITHIN_NOISE
    return Value(text, number=ratio, tone=tone)


@dataclass
class RatioFlags:
    """What the notes under a table of ratios must explain."""

    saturated: bool = False
    noisy: bool = False

    def notes(self) -> list[str]:
        return ([NOISE_NOTE] if self.noisy else []) + ([RATIO_NOTE] if self.saturated else [])


def change_value(old: Sequence[Rated], new: Sequence[Rated], flags: RatioFlags) -> Value:
    """The summed rate of `new` over `old` (`rate_change`) as `ratio_value` shows it, noting in
    `flags` what the table's notes must explain."""
    change = rate_change(old, new)
    if change is None:
        return Value(MISSING)
    old_sat = any(m.client_saturated for m in old)
    new_sat = any(m.client_saturated for m in new)
    flags.saturated |= old_sat or new_sat
    flags.noisy |= bool(change.within_noise)
    return ratio_value(change.ratio, 1.0, new_sat, old_sat, True, change.within_noise)


ACROSS_MACHINES_OPTION = "--across-machines"  # the report's option (bench/cli.py)


def on_one_machine(pairs: Sequence[Pair], across_machines: bool) -> tuple[list[Pair], list[str]]:
    """The pairs a table of speedups shows and its notes on those measured on two machines.

    Those are left out, each named with its machines: a ratio of a server on one machine over
    another server on another is the machines' as much as the servers'. With `across_machines`
    they are shown, and the note says so and names them all the same.
    """
    across = [p for p in pairs if not p.same_machine]
    if not across:
        return list(pairs), []
    named = "; ".join(
        f"{p.other.cell.name} on {machine(p.other)} vs {p.base.cell.name} on {machine(p.base)}"
        for p in across
    )
    if across_machines:
        return list(pairs), [
            f"Compared across machines, as {ACROSS_MACHINES_OPTION} asked: {named}. These "
            "ratios are the machines' as much as the servers'."
        ]
    return [p for p in pairs if p.same_machine], [
        f"Left out, measured on different machines: {named}. A speedup across machines is the "
        f"machines' as much as the servers' ({ACROSS_MACHINES_OPTION} computes it anyway)."
    ]
