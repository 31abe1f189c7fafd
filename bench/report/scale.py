"""The Data at scale section: each endpoint's latency against the number of flow runs the cell's
database held before it was measured (`--preload N`), one series per cell over the runs made at
different N, and what the databases held."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from bench.report import aggregate
from bench.report.document import Chart, Column, Section, Series, Table, Value
from bench.report.numbers import MISSING, SATURATED_MARK, fmt_ms, fmt_ratio
from bench.results import Result

TITLE = "Data at scale"
ERRORS_MARK = "*"
INTRO = (
    "Each endpoint's latency against N, the flow runs the cell's database held before it was "
    "measured (--preload N): one series per cell (server, db, broker) over the runs made at "
    "different N. The last column of each series is its latency at its largest N divided by "
    "its latency at its smallest: above 1× is slower with more data."
)
MERGE_NOTE = (
    "A cell's repetitions in a run are merged as everywhere in the report (latencies from their "
    "added histograms); where several runs measured a series at the same N (runs: in the table "
    "of what the databases held), each p50 and p99 shown is the median of those runs' p50s and "
    "p99s."
)
ERRORS_NOTE = (
    f"{ERRORS_MARK}: the endpoint answered errors at that N (the Endpoints section counts "
    "them): the latency is of its successful responses only."
)
SATURATED_NOTE = (
    f"{SATURATED_MARK}: the load generator was saturated in that measurement: the latency "
    "includes client-side delay."
)
CHART_NOTE = "Solid: p50, dashed: p99; one colour per cell."

_Pick = Literal["p50", "p99"]


@dataclass(frozen=True)
class _Point:
    """One endpoint × level of one series at one N, merged over the runs that measured it."""

    p50: float | None
    p99: float | None
    saturated: bool
    errors: bool


@dataclass
class _Series:
    """One cell over the N it was preloaded with: its results (one per run) by N, ascending."""

    label: str
    by_n: dict[int, list[Result]]

    @property
    def sizes(self) -> list[int]:
        return list(self.by_n)

    def point(self, key: tuple[str, int], n: int) -> _Point | None:
        eps = [m[key] for r in self.by_n[n] if key in (m := aggregate.measurements(r))]
        if not eps:
            return None
        timed = [e.latency_ms for e in eps if e.latency_ms is not None]
        return _Point(
            statistics.median(lat.p50 for lat in timed) if timed else None,
            statistics.median(lat.p99 for lat in timed) if timed else None,
            any(e.client_saturated for e in eps),
            any(sum(e.errors.values()) for e in eps),
        )


def _n(n: int) -> str:
    return f"{n:,}"


def _short(n: float) -> str:
    """A tick label: 500, 10k, 2.5M."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}"


def _series(results: Iterable[Result]) -> list[_Series]:
    """Every cell's results by N (ok ones with a preload, repetitions merged), in the report's
    order of cells: by db and broker, the reference server first."""
    merged = aggregate.merge_repetitions(results)
    preloaded = [r for r in merged if r.status == "ok" and r.preload is not None]
    cells: dict[str, dict[int, list[Result]]] = {}
    for r in aggregate.display_order(preloaded):
        assert r.preload is not None
        cells.setdefault(r.cell.name, {}).setdefault(r.preload.flow_runs, []).append(r)
    version = aggregate.reference_version(preloaded)
    order = {
        r.cell.name: (r.cell.db, r.cell.broker, not aggregate.is_reference(r, version))
        for r in preloaded
    }
    return [
        _Series(name, dict(sorted(by_n.items())))
        for name, by_n in sorted(cells.items(), key=lambda item: (order[item[0]], item[0]))
    ]


def _value(point: _Point | None, pick: _Pick) -> Value:
    if point is None:
        return Value(MISSING)
    ms = getattr(point, pick)
    text = fmt_ms(ms) + (SATURATED_MARK if point.saturated else "")
    if point.errors:
        return Value(text + ERRORS_MARK, number=ms, tone="bad")
    return Value(text, number=ms)


def _ratio(first: _Point | None, last: _Point | None, pick: _Pick) -> Value:
    low = None if first is None else getattr(first, pick)
    high = None if last is None else getattr(last, pick)
    if low is None or high is None or low <= 0:
        return Value(MISSING)
    return Value(fmt_ratio(high / low), number=high / low)


def _latency_table(pick: _Pick, keys: Sequence[tuple[str, int]], drawn: Sequence[_Series]) -> Table:
    columns = [Column("endpoint"), Column("c", numeric=True)]
    for s in drawn:
        columns += [Column(f"{s.label} N={_n(n)}", numeric=True) for n in s.sizes]
        columns.append(Column(f"{s.label} N={_n(s.sizes[-1])} / N={_n(s.sizes[0])}", numeric=True))
    table = Table(f"{pick} latency (ms) by flow runs preloaded", columns, grouped=True)
    for key in keys:
        row = [Value(key[0]), Value(str(key[1]))]
        for s in drawn:
            points = [s.point(key, n) for n in s.sizes]
            row += [_value(p, pick) for p in points]
            row.append(_ratio(points[0], points[-1], pick))
        table.rows.append(row)
    return table


def _held(runs: Sequence[Result], kind: str) -> Value:
    """A count the databases held; a range where the runs at one N differ."""
    counts = [r.preload.counts[kind] for r in runs if r.preload and kind in r.preload.counts]
    if not counts:
        return Value(MISSING)
    low, high = min(counts), max(counts)
    return Value(_n(low) if low == high else f"{_n(low)}–{_n(high)}", number=high)


def _held_table(drawn: Sequence[_Series], shapes: bool) -> Table:
    runs = [r for s in drawn for rs in s.by_n.values() for r in rs]
    kinds = list(dict.fromkeys(k for r in runs if r.preload for k in r.preload.counts))
    columns = [Column("cell"), Column("flow runs (N)", numeric=True), Column("runs", numeric=True)]
    columns += [Column(kind.replace("_", " "), numeric=True) for kind in kinds]
    columns += [Column("shape")] if shapes else []
    table = Table("What the databases held", columns, grouped=True)
    for s in drawn:
        for n, rs in s.by_n.items():
            row = [Value(s.label), Value(_n(n)), Value(str(len(rs)))]
            row += [_held(rs, kind) for kind in kinds]
            if shapes:
                row.append(
                    Value(" / ".join(dict.fromkeys(r.preload.shape for r in rs if r.preload)))
                )
            table.rows.append(row)
    return table


def _shape_warning(drawn: Sequence[_Series]) -> str | None:
    """A warning naming each shape the series were preloaded with, and where, if not one."""
    where: dict[str, list[str]] = {}
    for s in drawn:
        for n, rs in s.by_n.items():
            for r in rs:
                if r.preload is not None:
                    at = f"{s.label} N={_n(n)}"
                    if at not in where.setdefault(r.preload.shape, []):
                        where[r.preload.shape].append(at)
    if len(where) < 2:
        return None
    shapes = " vs ".join(f"{shape} ({', '.join(at)})" for shape, at in sorted(where.items()))
    return (
        f"Warning: the databases were preloaded with different shapes (--preload-shape): "
        f"{shapes}. They held different task runs, logs or flows besides the flow runs: "
        "latencies across the shapes are not like-for-like."
    )


def _shape_note(drawn: Sequence[_Series]) -> str:
    shapes = sorted(
        {r.preload.shape for s in drawn for rs in s.by_n.values() for r in rs if r.preload}
    )
    what = "the shape " + shapes[0] if len(shapes) == 1 else "each its own shape (see the warning)"
    return (
        "N: the flow runs the database held before the measurement, seeded through the server's "
        "API (or restored from a snapshot of a database so seeded), with their flows, deployments, "
        f"task runs, logs and the events the server emitted for them, in {what} "
        "(--preload-shape: flows, deployments per flow, task runs and log lines per flow run, days "
        "the expected start times span); the table above says what each database held."
    )


def _chart(name: str, c: int, drawn: Sequence[_Series]) -> Chart | None:
    series = []
    sizes: set[int] = set()
    for s in drawn:
        found = [(n, p) for n in s.sizes if (p := s.point((name, c), n)) is not None]
        p50 = [(float(n), p.p50) for n, p in found if p.p50 is not None]
        p99 = [(float(n), p.p99) for n, p in found if p.p99 is not None]
        if p50:
            series.append(Series(s.label, p50, label="p50"))
        if p99:
            series.append(Series(s.label, p99, label="p99", style="dashed"))
        sizes.update(int(n) for n, _ in p50 + p99)
    if len(sizes) < 2:  # one N is no line: that level was measured at one size only
        return None
    return Chart(
        f"{name} c={c}: latency against flow runs preloaded",
        "flow runs preloaded (N)",
        "latency (ms)",
        series,
        x_scale="log",
        y_scale="log",
        x_ticks=[(float(n), _short(n)) for n in sorted(sizes)],
        note=CHART_NOTE,
    )


def scale_section(results: Iterable[Result]) -> Section | None:
    """The section for the ok results that record a preload (`Result.preload`; the repetitions
    of a cell in a run merged here unless they are already): None unless some cell was measured
    at two N or more."""
    found = _series(results)
    drawn = [s for s in found if len(s.sizes) >= 2]
    if not drawn:
        return None
    runs = [r for s in drawn for rs in s.by_n.values() for r in rs]
    keys = aggregate.endpoint_keys(runs)
    if not keys:
        return None
    section = Section(TITLE, paragraphs=[INTRO])
    warning = _shape_warning(drawn)
    if warning is not None:
        section.paragraphs.insert(0, warning)
    section.tables += [_latency_table("p50", keys, drawn), _latency_table("p99", keys, drawn)]
    shapes = warning is not None
    section.tables.append(_held_table(drawn, shapes))
    section.charts += [chart for name, c in keys if (chart := _chart(name, c, drawn))]
    section.notes += [_shape_note(drawn), MERGE_NOTE]
    points = [p for s in drawn for n in s.sizes for key in keys if (p := s.point(key, n))]
    if any(p.errors for p in points):
        section.notes.append(ERRORS_NOTE)
    if any(p.saturated for p in points):
        section.notes.append(SATURATED_NOTE)
    single = [s for s in found if len(s.sizes) < 2]
    if single:
        section.notes.append(
            "Left out, measured at one N only: "
            + ", ".join(f"{s.label} (N={_n(s.sizes[0])})" for s in single)
            + "."
        )
    return section
