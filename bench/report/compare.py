"""Whether a difference in rate is more than noise, and how every table of ratios shows it.

Within one pair of results: each measurement carries the rates of the equal slices of its window
(`rps_slices` of an endpoint, `per_s_slices` of a scenario). The ratio of two sets of
measurements is sum(new rate) / sum(old rate); its 95% interval comes from resampling every
measurement's slices. A ratio whose interval holds 1 is within the noise: no change can be told.
The converse does not hold: the slices see the noise within a window, not the larger noise
between two runs (another server process, another database file), so a ratio outside its
interval is not yet a significant change.

Between repeated runs (a baseline and the runs compared with it, `baseline_section`): each run
gives one value per figure of bench.compare.metrics.METRICS, and those are tested and corrected
as one family exactly as `compare` tests repetitions (bench.compare.change.assess). That is the
test that sees the noise between runs.

`ratio_value` shows a ratio (speedups, changes, the baseline; endpoints and scenarios alike):
its bound marks, "~" within the noise, and its tone; `RatioFlags` collects the notes a table of
them needs. `on_one_machine` keeps speedups to pairs measured on one machine, unless told not to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bench.compare.change import SIGNIFICANCE, Figure, assess, interval
from bench.compare.metrics import METRICS, TOTAL, Metric, Reading, readings
from bench.compare.stats import smallest_p
from bench.report.aggregate import Pair, Series, display_order, machine, series_key
from bench.report.document import Column, Section, Table, Tone, Value
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

    def resampled_ratio(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        base = sum(np.mean(s, axis=axis) for s in samples[:n_old])
        rate = sum(np.mean(s, axis=axis) for s in samples[n_old:])
        # old slices resampled to all zeros leave nothing to divide by: 0, not inf
        return np.divide(rate, base, out=np.zeros_like(rate), where=base != 0)

    low, high = interval([g for g in groups if g is not None], resampled_ratio)
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
    series: dict[tuple[str, Series], list[Result]] = {}
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


BASELINE_TITLE = "Against the baseline"
TOO_FEW_RUNS = " ?"
# A row of the baseline's table: what was measured, its step (None: the whole of it) and level.
_Row = tuple[str, str | None, int]


def baseline_note() -> str:
    """What the baseline's table shows and how it was tested."""
    return (
        "Each cell's figures over the runs compared with the baseline, one value per run (its "
        "repetitions merged): " + ", ".join(m.text for m in METRICS.values()) + ". A ratio is "
        "the mean over the runs compared divided by the mean over the baseline runs. p is the "
        "two-sided p-value of a permutation test on the runs' values (so the noise between runs "
        "is in it), corrected for every figure of the table tested at once (Benjamini-Hochberg, "
        f"the totals weighted, as `compare` does): p < {SIGNIFICANCE:g} is a significant "
        "change, ~ marks one that is not, or a figure equal in every run (not tested). ? marks "
        "too few runs on a side for any test to tell (with 3 a side the smallest p is "
        f"{smallest_p(3, 3):g}). Totals sum "
        "the rates every run of both sides measured at that concurrency."
    )


def _key(r: Reading) -> _Row:
    return (r.subject, r.step, r.concurrency)


def _grouped(keys: Iterable[_Row]) -> list[_Row]:
    """The rows once each, grouped by what was measured and then by step (each in the order
    first met), levels rising within a group."""
    found = list(dict.fromkeys(keys))
    subjects = {s: i for i, s in enumerate(dict.fromkeys(k[0] for k in found))}
    steps = {s: i for i, s in enumerate(dict.fromkeys(k[:2] for k in found))}
    return sorted(found, key=lambda k: (subjects[k[0]], steps[k[:2]], k[2]))


@dataclass
class _Tested:
    """One figure of one cell's column, and whether the load generator saturated a side."""

    figure: Figure
    metric: Metric
    old_saturated: bool
    new_saturated: bool


def _figures(
    cell: str, old: Sequence[dict[_Row, Reading]], new: Sequence[dict[_Row, Reading]]
) -> dict[tuple[_Row, str], _Tested]:
    """A cell's figures by (row, metric): each reading's from the runs that have it, and per
    level the total of each summed metric over the readings every run of both sides has."""
    found: dict[tuple[_Row, str], _Tested] = {}
    runs = [*old, *new]
    for key in dict.fromkeys(k for run in runs for k in run):
        o = [run[key] for run in old if key in run]
        n = [run[key] for run in new if key in run]
        for m in METRICS.values():
            before = [r.values[m.name] for r in o if m.name in r.values]
            after = [r.values[m.name] for r in n if m.name in r.values]
            if before and after:
                figure = Figure(cell, key[0], m.name, before, after)
                sat = (any(r.saturated for r in o), any(r.saturated for r in n))
                found[(key, m.name)] = _Tested(figure, m, *sat)
    for c in sorted({k[2] for run in runs for k in run}):
        common = [k for k in runs[0] if k[1] is None and k[2] == c and all(k in r for r in runs)]
        if not common:
            continue
        for m in METRICS.values():
            if m.summed:
                before = [sum(run[k].values.get(m.name, 0.0) for k in common) for run in old]
                after = [sum(run[k].values.get(m.name, 0.0) for k in common) for run in new]
                sat = (
                    any(run[k].saturated for run in old for k in common),
                    any(run[k].saturated for run in new for k in common),
                )
                figure = Figure(cell, TOTAL, m.name, before, after)
                found[((TOTAL, None, c), m.name)] = _Tested(figure, m, *sat)
    return found


def _tested_value(t: _Tested, flags: RatioFlags) -> Value:
    """A tested figure as "0.80× p=0.029", "1.00× ~" (not tested: equal in every run) or
    "0.50× ?" (too few runs for any test to tell)."""
    f = t.figure
    if math.isnan(f.ratio):
        return Value(MISSING)
    flags.saturated |= t.old_saturated or t.new_saturated
    flags.turned |= not t.metric.higher_is_better and t.old_saturated != t.new_saturated
    # within the noise: not significant, or not tested for every run measured the same
    within_noise = not f.too_few and not f.significant
    value = ratio_value(
        f.ratio, 1.0, t.new_saturated, t.old_saturated, t.metric.higher_is_better, within_noise
    )
    if f.too_few:
        return Value(value.text + TOO_FEW_RUNS, value.number, "muted")
    if f.p_adjusted is None:
        return value
    return Value(f"{value.text} p={f.p_adjusted:.2g}", value.number, value.tone)


def baseline_section(baseline: Sequence[Result], results: Sequence[Result]) -> Section:
    """The report's comparison of `results` with a `baseline` (both with each run's repetitions
    merged): for every cell with ok results on both sides, each figure of METRICS of its
    endpoints, scenarios and steps at each level and the summed ones' totals per level, run
    against run; every figure of the table is tested and corrected as one family, as `compare`
    does (bench.compare.change.assess). A row per figure and level, a column per cell and
    metric."""
    section = Section(BASELINE_TITLE)
    groups = baseline_groups(baseline, results)
    if not groups:
        section.paragraphs.append(
            "Nothing to compare: no cell has ok results both in the baseline and in the results "
            "compared with it."
        )
        return section
    section.paragraphs.append(baseline_note())
    found = []
    for g in groups:
        old = [{_key(r): r for r in readings(run)} for run in g.old]
        new = [{_key(r): r for r in readings(run)} for run in g.new]
        found.append(_figures(g.cell, old, new))
    assess([t.figure for tested in found for t in tested.values()])
    rows = _grouped(key for tested in found for key, _ in tested if key[0] != TOTAL)
    levels = sorted({c for _, _, c in rows})
    table = Table(
        None,
        [Column("figure"), Column("c", numeric=True)]
        + [
            Column(f"{g.cell} ({len(g.new)} vs {len(g.old)} runs) {m}", numeric=True)
            for g in groups
            for m in METRICS
        ],
        grouped=True,
    )
    flags = RatioFlags()
    for subject, step, c in [*rows, *((TOTAL, None, c) for c in levels)]:
        row = [Value(subject if step is None else f"{subject}: {step}"), Value(str(c))]
        for tested in found:
            for m in METRICS:
                t = tested.get(((subject, step, c), m))
                row.append(Value(MISSING) if t is None else _tested_value(t, flags))
        table.rows.append(row)
    section.tables.append(table)
    section.notes += flags.notes()
    return section


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
TURNED_NOTE = (
    f"For a figure where lower is better (a latency) {LOWER_BOUND} and {UPPER_BOUND} turn: a "
    "saturated side's latencies include the load generator's own delay, so they are at most "
    f"what is shown ({UPPER_BOUND}: the server named above the column was measured saturated, "
    f"{LOWER_BOUND}: the one it is compared with)."
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
    the difference is within the noise; no good/bad tone for differences within the noise.

    A saturated side's figure is a bound on its better side (a rate at least, a latency at
    most), so the marks turn for a figure where lower is better."""
    if num is None or den is None or den == 0:
        return Value(MISSING)
    ratio = num / den
    bound = ""
    if num_sat != den_sat:
        # A saturated numerator is a lower bound, a saturated denominator makes an upper bound
        # (for a rate: the saturated side could have been better, i.e. higher).
        bound = LOWER_BOUND if num_sat == higher_is_better else UPPER_BOUND
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
    turned: bool = False  # a bound marks a figure where lower is better

    def notes(self) -> list[str]:
        return (
            ([NOISE_NOTE] if self.noisy else [])
            + ([RATIO_NOTE] if self.saturated else [])
            + ([TURNED_NOTE] if self.turned else [])
        )


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
