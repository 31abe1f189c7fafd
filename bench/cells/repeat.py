"""Repeating a cell: where each repetition's result goes and when `--repeat auto` stops.

Each repetition is a fresh server and database, so its figures carry the noise between runs
(another process, another database file), which a single run cannot show. `auto` repeats until
every figure's 95% interval, the half-width of the t interval of the mean over the counted
repetitions relative to that mean, is within the target: with few repetitions a bootstrap
interval is too narrow (it cannot see beyond the values it has), the t interval is not.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from bench.compare.gate import cell_figures
from bench.core.errors import ResultsError
from bench.results import Cell, RepeatState, Result, load_result, result_path

CONFIDENCE = 0.95
# An interval needs this many counted repetitions before it can say the target is met: with
# two, one lucky pair of equal values would stop a noisy cell.
MIN_FOR_TARGET = 3
# A budget never stops a cell before this many counted repetitions (two values are the least
# that show any noise between runs).
MIN_REPETITIONS = 2
# `auto` stops here whatever the intervals: a cell that needs more is too noisy to converge.
MAX_AUTO = 20
# Why the first repetition of a repeated cell is left out (unless --keep-first): as pyperf
# leaves out each worker's first value, a warm-up. Measured here, the first of 8 repetitions
# was 0.73-0.99x the mean of the rest in 3 of 4 python cells (docs/design-notes.md).
WARMUP_REPETITION = "the warm-up repetition: the first of a repeated cell (--keep-first counts it)"


def repetition_path(out_dir: Path, run_id: str, cell: Cell, repetition: int) -> Path:
    """`<cell>.json` for the first repetition (as a cell run once), `<cell>.<k>.json` after."""
    path = result_path(out_dir, run_id, cell)
    return path if repetition == 1 else path.with_name(f"{cell.name}.{repetition}.json")


def earlier_repetitions(out_dir: Path, run_id: str, cell: Cell) -> list[Result]:
    """The repetitions of `cell` already written in this run, in order of repetition."""
    found = []
    folder = out_dir / run_id
    for path in [result_path(out_dir, run_id, cell), *folder.glob(f"{cell.name}.*.json")]:
        suffix = path.name[len(cell.name) + 1 : -len(".json")]
        if not path.exists() or (suffix and not suffix.isdigit()):
            continue
        try:
            result = load_result(path)
        except ResultsError:
            continue  # not ours to judge here; the report warns about it
        if result.cell == cell:
            found.append(result)
    return sorted(found, key=lambda r: r.repetition or 1)


# The figures `auto` watches: rates and medians. A p99 of a few seconds' window moves with a
# handful of requests, and waiting for it to settle would spend the budget on its tail.
WATCHED = ("rps", "p50")


def figures(result: Result) -> dict[str, float]:
    """The figures of a repetition `auto` watches (bench.compare.gate's, rates and medians):
    the total, each endpoint's rps and p50 at each level, each scenario's rate and its steps'
    p50, by name."""
    return {
        "total" if name == "total" else f"{name} {metric}": value
        for (name, metric), value in cell_figures(result).items()
        if metric in WATCHED
    }


def interval_pct(values: Sequence[float]) -> float:
    """Half-width of the 95% t interval of the mean of `values`, in % of the mean (inf when
    it cannot be told: fewer than two values or a mean of 0)."""
    mean = statistics.fmean(values) if values else 0.0
    if len(values) < 2 or mean == 0:
        return math.inf
    t = stats.t.ppf((1 + CONFIDENCE) / 2, len(values) - 1)
    return float(100 * t * statistics.stdev(values) / math.sqrt(len(values)) / abs(mean))


@dataclass(frozen=True)
class Reached:
    total_pct: float
    worst: str
    worst_pct: float


def reached(counted: Sequence[Result]) -> Reached:
    """The interval of the total and of the widest figure over the counted repetitions (figures
    every one of them has)."""
    per_rep = [figures(r) for r in counted]
    names = set.intersection(*(set(f) for f in per_rep)) if per_rep else set()
    widths = {name: interval_pct([f[name] for f in per_rep]) for name in names}
    if not widths:
        return Reached(math.inf, "", math.inf)
    worst = max(sorted(widths), key=lambda n: widths[n])
    return Reached(widths.get("total", math.inf), worst, widths[worst])


def decide(
    repeat: int | str,
    target_pct: float,
    counted: Sequence[Result],
    seconds_left: float | None,
    seconds_per_repetition: float,
) -> RepeatState:
    """Whether the cell needs another repetition after the ones `counted` (ok and not
    discarded); the state is stored in the last repetition's result.

    `seconds_left` is the budget left (None: no budget); another repetition is not started
    when it would not fit, unless fewer than MIN_REPETITIONS are counted.
    """
    n = len(counted)
    got = reached(counted)
    state = RepeatState(
        counted=n,
        interval_pct=_finite(got.total_pct),
        widest=got.worst or None,
        widest_pct=_finite(got.worst_pct),
    )
    if repeat != "auto":
        if n >= int(repeat):
            state.stopped = "count"
        return state
    if n >= MIN_FOR_TARGET and got.worst_pct <= target_pct:
        state.stopped = "target"
    elif n >= MAX_AUTO:
        state.stopped = "limit"
    elif seconds_left is not None and seconds_left < seconds_per_repetition:
        if n >= MIN_REPETITIONS:
            state.stopped = "budget"
        else:
            state.over_budget = True
    return state


def _finite(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None
