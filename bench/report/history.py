"""A cell's figures over many runs, and where they changed: E-divisive change points
(signal-processing-algorithms, as MongoDB finds performance changes in its CI) in each figure of
each series of runs, and the report's History section.

A series is one cell measured with one set of measurement settings on one machine
(`aggregate.series_key`): only such runs are like-for-like; a cell with several series is named
with the settings its series differ in. A series has one point per run (its repetitions merged),
runs ordered by their start. Its figures: the total rps at each level, each endpoint's rps at
each level, each scenario's completed/s at each level.

E-divisive finds the split of a series that makes its two parts most unlike (energy
statistics: the distances between the parts against those within them), keeps it when a
permutation test says so (p <= PVALUE over PERMUTATIONS shuffles), and goes on within the
parts. The shuffles come from numpy's global generator; they are seeded (SEED) and the
generator's state restored around each call, so a history gives the same changes every time.
Parts shorter than MIN_SEGMENT runs are merged into a neighbour and every change left is tested
again between its neighbouring parts: one run off (a spike) or a change in the last runs is not
a change yet.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from signal_processing_algorithms.determinism import deterministic_numpy_random
from signal_processing_algorithms.energy_statistics import energy_statistics

from bench.report import aggregate, compare
from bench.report.document import Chart, Column, Mark, Section, Series, Table, Value
from bench.report.numbers import fmt_num
from bench.results import Result

MIN_SEGMENT = 3  # runs either side of a change
PVALUE = 0.01
PERMUTATIONS = 199
SEED = 1
# Tick labels along a history chart: more would overlap.
MAX_TICKS = 12

METHOD_NOTE = (
    "Changes are found in each figure over the runs of a series (one cell, one set of settings, "
    "one machine; runs ordered by start, a cell's repetitions in a run merged) with E-divisive "
    f"(energy statistics; a change is kept at p <= {PVALUE} in a permutation test of "
    f"{PERMUTATIONS} shuffles, seeded, so the same runs give the same changes) and at least "
    f"{MIN_SEGMENT} runs either side of it: a single odd run is not a change, nor is one in the "
    f"last {MIN_SEGMENT - 1} runs yet. Before and after are the mean of the figure between the "
    "changes either side."
)


@dataclass(frozen=True)
class Change:
    """A change in one figure: `index` is the first run after it."""

    figure: str
    index: int
    run_id: str
    started_at: str
    before: float
    after: float

    @property
    def ratio(self) -> float | None:
        return self.after / self.before if self.before else None


@dataclass
class Figure:
    """One figure of a series, one value per run (None where a run did not measure it)."""

    name: str
    values: list[float | None]
    changes: list[Change] = field(default_factory=list)


@dataclass
class History:
    """The ok runs of one series, oldest first, and its figures."""

    cell: str
    settings: aggregate.Series
    runs: list[Result]
    figures: list[Figure]
    drawn: list[tuple[str, str]]  # the figures its chart draws: (figure name, line label)

    @property
    def changes(self) -> list[Change]:
        # By run, and within a run in the figures' order (totals first): sorted() is stable.
        return sorted((c for f in self.figures for c in f.changes), key=lambda c: c.index)


def _figures(runs: Sequence[Result]) -> tuple[list[Figure], list[tuple[str, str]]]:
    """Every figure of the runs, and those its chart draws: the totals by level, or for
    scenario workloads each scenario's rate by level."""
    figures: list[Figure] = []
    for c in aggregate.concurrency_levels(runs):
        totals = [aggregate.total_rps(r, c) for r in runs]
        figures.append(Figure(f"total rps c={c}", [None if t is None else t.rps for t in totals]))
    drawn = [(f.name, f.name.removeprefix("total rps ")) for f in figures]
    for name, c in aggregate.endpoint_keys(runs):
        eps = [aggregate.measurements(r).get((name, c)) for r in runs]
        figures.append(Figure(f"{name} rps c={c}", [None if e is None else e.rps for e in eps]))
    by_totals = bool(drawn)
    levels: dict[str, set[int]] = {}
    for r in runs:
        for name, c in aggregate.scenario_measurements(r):
            levels.setdefault(name, set()).add(c)
    for name, cs in levels.items():
        for c in sorted(cs):
            found = [aggregate.scenario_measurements(r).get((name, c)) for r in runs]
            rates = [None if s is None else s.per_s for s in found]
            figures.append(Figure(f"{name} completed/s c={c}", rates))
            # One scenario's levels are lines one chart can hold; several scenarios' are not.
            if not by_totals and len(levels) == 1:
                drawn.append((figures[-1].name, f"c={c}"))
    return figures, drawn


def _energy_p(x: Sequence[float], y: Sequence[float]) -> float:
    stats = energy_statistics.get_energy_statistics_and_probabilities(x, y, PERMUTATIONS)
    return float(stats.t_pvalue)


def _segments(n: int, points: Sequence[int]) -> list[tuple[int, int]]:
    bounds = [0, *points, n]
    return list(itertools.pairwise(bounds))


def _enforce_min_segment(values: Sequence[float], points: list[int]) -> list[int]:
    """`points` with no part shorter than MIN_SEGMENT: the shortest part is merged into its
    neighbour (the one with the closer mean, inside the series), until none is short."""
    points = sorted(set(points))
    while points:
        parts = _segments(len(values), points)
        k, (a, b) = min(enumerate(parts), key=lambda kp: kp[1][1] - kp[1][0])
        if b - a >= MIN_SEGMENT:
            break
        if k == 0:
            points.pop(0)
        elif k == len(parts) - 1:
            points.pop()
        else:
            mean = statistics.fmean(values[a:b])
            left, right = parts[k - 1], parts[k + 1]
            to_left = abs(mean - statistics.fmean(values[left[0] : left[1]])) <= abs(
                mean - statistics.fmean(values[right[0] : right[1]])
            )
            points.remove(a if to_left else b)
    return points


def _retested(values: Sequence[float], points: list[int]) -> list[int]:
    """`points` less those not significant between their neighbouring parts, the least
    significant dropped first, until every one left is."""
    while points:
        parts = _segments(len(values), points)
        p_values = [
            _energy_p(values[parts[k][0] : parts[k][1]], values[parts[k + 1][0] : parts[k + 1][1]])
            for k in range(len(points))
        ]
        worst = max(range(len(points)), key=lambda k: p_values[k])
        if p_values[worst] <= PVALUE:
            break
        points.pop(worst)
    return points


def change_points(values: Sequence[float]) -> list[int]:
    """The indices where `values` changed (each the first value after a change), with at least
    MIN_SEGMENT values either side; repeatable (seeded)."""
    if len(values) < 2 * MIN_SEGMENT or max(values) == min(values):
        return []
    with deterministic_numpy_random(SEED):
        found = energy_statistics.e_divisive(list(values), pvalue=PVALUE, permutations=PERMUTATIONS)
        enforced = _enforce_min_segment(values, list(found))
        if enforced == sorted(found):
            return enforced
        return _retested(values, enforced)


def _find_changes(figure: Figure, runs: Sequence[Result]) -> list[Change]:
    measured = [(i, v) for i, v in enumerate(figure.values) if v is not None]
    values = [v for _, v in measured]
    points = change_points(values)
    changes = []
    for k, point in enumerate(points):
        start = points[k - 1] if k else 0
        end = points[k + 1] if k + 1 < len(points) else len(values)
        run = runs[measured[point][0]]
        changes.append(
            Change(
                figure.name,
                measured[point][0],
                run.run_id,
                run.started_at,
                statistics.fmean(values[start:point]),
                statistics.fmean(values[point:end]),
            )
        )
    return changes


def histories(results: Iterable[Result]) -> list[History]:
    """The series of the ok `results` (repetitions merged already), cells in display order, and
    the changes in each of their figures."""
    series: dict[tuple[str, aggregate.Series], list[Result]] = {}
    for r in aggregate.display_order(r for r in results if r.status == "ok"):
        series.setdefault(aggregate.series_key(r), []).append(r)
    found = []
    for (cell, settings), runs in series.items():
        runs.sort(key=lambda r: (r.started_at, r.run_id))
        figures, levels = _figures(runs)
        for figure in figures:
            figure.changes = _find_changes(figure, runs)
        found.append(History(cell, settings, runs, figures, levels))
    return found


def _labels(found: Sequence[History]) -> list[str]:
    """The cell's name, and where a cell has more than one series the settings they differ in:
    "zig-sqlite-memory [duration_s 2]"."""
    labels = []
    for h in found:
        others = [o.settings for o in found if o.cell == h.cell]
        differing = [
            f"{name} {value}"
            for k, (name, value) in enumerate(h.settings)
            if any(o[k] != (name, value) for o in others)
        ]
        labels.append(f"{h.cell} [{', '.join(differing)}]" if differing else h.cell)
    return labels


def _date(started_at: str) -> str:
    return started_at.replace("T", " ").removesuffix("Z")[:16]


def _chart(h: History, label: str) -> Chart:
    n = len(h.runs)
    by_name = {f.name: f for f in h.figures}
    series = [
        Series(
            label,
            [(float(i), v) for i, v in enumerate(by_name[name].values)],
            label=line,
            point_labels=[""] * (n - 1) + [line],
            markers=n <= 40,
        )
        for name, line in h.drawn
    ]
    step = max(1, -(-n // MAX_TICKS))
    marks: dict[int, list[str]] = {}
    for change in h.changes:
        marks.setdefault(change.index, []).append(change.figure)
    y_label = "rps" if any(name.startswith("total") for name, _ in h.drawn) else "completed/s"
    first, last = _date(h.runs[0].started_at), _date(h.runs[-1].started_at)
    return Chart(
        f"{label}: over {n} runs",
        f"run, oldest first ({first} to {last})",
        y_label,
        series,
        # Run numbers, not dates: runs come at any pace, several a day or one a month.
        x_ticks=[(float(i), str(i + 1)) for i in range(0, n, step)],
        marks=[
            Mark(float(i), names[0] if len(names) == 1 else f"{len(names)} figures")
            for i, names in marks.items()
        ],
        note="Lines: " + ", ".join(name for name, _ in h.drawn) + "; dotted: a change.",
    )


def history_section(results: Iterable[Result]) -> Section:
    """The History section over `results` (many runs, repetitions merged already)."""
    section = Section("History")
    found = histories(results)
    if not found:
        section.paragraphs.append("No ok results in the history.")
        return section
    section.paragraphs.append(METHOD_NOTE)
    labels = _labels(found)
    table = Table(
        "Changes",
        [
            Column("cell"),
            Column("figure"),
            Column("first run after"),
            Column("started"),
            Column("before → after", numeric=True),
            Column("ratio", numeric=True),
        ],
        grouped=True,
    )
    for h, label in zip(found, labels, strict=True):
        for c in h.changes:
            table.rows.append(
                [
                    Value(label),
                    Value(c.figure),
                    Value(c.run_id),
                    Value(_date(c.started_at)),
                    Value(f"{fmt_num(c.before)} → {fmt_num(c.after)}"),
                    compare.ratio_value(c.after, c.before, False, False, True),
                ]
            )
        if len(h.runs) >= 2 * MIN_SEGMENT:
            section.charts.append(_chart(h, label))
    if table.rows:
        section.tables.append(table)
    else:
        section.paragraphs.append("No change found in any figure.")
    short = [
        f"{label} ({len(h.runs)} run{'' if len(h.runs) == 1 else 's'})"
        for h, label in zip(found, labels, strict=True)
        if len(h.runs) < 2 * MIN_SEGMENT
    ]
    if short:
        section.notes.append(
            f"Too short to tell a change ({2 * MIN_SEGMENT} runs needed, {MIN_SEGMENT} either "
            f"side): {', '.join(short)}."
        )
    return section
