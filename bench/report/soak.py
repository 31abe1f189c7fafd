"""The Soak section: each --soak cell's figures window by window, drawn over time, and the slope
of each (bench.compare.trend) with its 95% interval, growth flagged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.compare.trend import Trend, trend
from bench.report.document import Chart, Column, Section, Series, Table, Value
from bench.report.numbers import fmt_duration, fmt_num
from bench.results import Result, SoakWindow


@dataclass(frozen=True)
class Figure:
    """One figure a soak follows: its name, unit, how to read it from a window, and whether
    its growth is bad news (memory, sizes, latency) or good (the rate)."""

    name: str
    unit: str
    read: Callable[[SoakWindow], float | None]
    growth_is_bad: bool = True


FIGURES = (
    Figure("rate", "/s", lambda w: w.per_s, growth_is_bad=False),
    Figure("p50", "ms", lambda w: w.p50_ms),
    Figure("p99", "ms", lambda w: w.p99_ms),
    Figure("errors", "per window", lambda w: float(w.errors)),
    Figure("server RSS", "MB", lambda w: w.server_rss_mb),
    Figure("database", "MB", lambda w: w.db_mb),
    Figure("Redis memory", "MB", lambda w: w.redis_mb),
    Figure("Redis stream entries", "", lambda w: w.redis_stream_entries),
    Figure("event lag p99", "ms", lambda w: w.lag_p99_ms),
    Figure("lag unresolved", "per window", lambda w: w.lag_unresolved),
    Figure("lost", "per window", lambda w: w.lost),
)
# The figures drawn over time (the others are in the table).
CHARTED = ("server RSS", "database", "Redis memory", "p99", "rate")

NOTE = (
    "Each row: the figure in the first and last windows, and the slope of the least-squares "
    "line through every window, per hour, with its 95% interval. 'grows' / 'shrinks': the "
    "interval excludes 0; 'no trend': it holds 0 (no change the windows can tell from their "
    "noise); 'unsure': under 3 windows. Growth of memory, sizes, latency or errors is in red."
)


def _label(result: Result, name: str) -> str:
    return f"{result.cell.name} {name}"


def _slope(t: Trend, unit: str) -> str:
    per = f"{unit}/h" if unit and unit != "per window" else "/h"
    text = f"{t.per_hour:+.3g} {per}"
    if t.low is not None and t.high is not None:
        text += f" ({t.low:+.3g} … {t.high:+.3g})"
    return text


def _verdict(t: Trend, figure: Figure) -> Value:
    bad = (t.verdict == "grows") == figure.growth_is_bad and t.verdict in ("grows", "shrinks")
    tone = "bad" if bad else ("muted" if t.verdict in ("no trend", "unsure") else "good")
    return Value(t.verdict, tone=tone)


def soak_section(results: Sequence[Result]) -> Section | None:
    """The section, for results with a soak (interrupted ones included: what they measured);
    None without."""
    soaked = [r for r in results if r.soak is not None and r.soak.windows]
    if not soaked:
        return None
    table = Table(
        "Over the soak: first and last window, and the slope per hour (95% interval)",
        [
            Column("cell"),
            Column("measured"),
            Column("figure"),
            Column("first", numeric=True),
            Column("last", numeric=True),
            Column("slope", numeric=True),
            Column(""),
        ],
        grouped=True,
    )
    paragraphs = []
    series: dict[str, list[Series]] = {name: [] for name in CHARTED}
    for r in soaked:
        assert r.soak is not None
        windows = r.soak.windows
        count = len({w.window for w in windows})
        spent = max(w.at_s for w in windows)
        paragraphs.append(
            f"{r.cell.name}: {count} windows of {r.soak.window_s:g} s, the last starting "
            f"{fmt_duration(spent)} into a soak of {fmt_duration(r.soak.planned_s)}"
            + ("" if r.status == "ok" else f" ({r.status}: {r.error})")
            + "."
        )
        for name in dict.fromkeys(w.name for w in windows):
            mine = [w for w in windows if w.name == name]
            for figure in FIGURES:
                points = [(w.at_s, figure.read(w)) for w in mine]
                t = trend(points)
                if t is None:
                    continue
                present = [v for _, v in points if v is not None]
                table.rows.append(
                    [
                        Value(r.cell.name),
                        Value(name),
                        Value(_unit(figure.name)),
                        Value(fmt_num(present[0]), number=present[0]),
                        Value(fmt_num(present[-1]), number=present[-1]),
                        Value(_slope(t, figure.unit), number=t.per_hour),
                        _verdict(t, figure),
                    ]
                )
                if figure.name in series:
                    minutes = [(at / 60, v) for at, v in points]
                    series[figure.name].append(Series(_label(r, name), minutes, markers=False))
    charts = [
        Chart(f"{name} over the soak", "minutes", _unit(name), lines)
        for name, lines in series.items()
        if lines
    ]
    return Section("Soak", paragraphs=paragraphs, tables=[table], charts=charts, notes=[NOTE])


def _unit(name: str) -> str:
    figure = next(f for f in FIGURES if f.name == name)
    return f"{figure.name} ({figure.unit})" if figure.unit else figure.name
