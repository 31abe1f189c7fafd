"""The report as a neutral document: sections of tables of formatted values, and charts, that
every renderer (terminal, Markdown, HTML) draws; only the renderers decide how a table, a tone
or a chart looks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Tone = Literal["", "ok", "failed", "skipped", "good", "bad", "muted"]


@dataclass(frozen=True)
class Value:
    """One table cell: its text, a number for charts and bars (HTML), and a tone for colour."""

    text: str
    number: float | None = None
    tone: Tone = ""


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False


@dataclass
class Table:
    title: str | None
    columns: list[Column]
    rows: list[list[Value]] = field(default_factory=list)
    bars: bool = False  # HTML draws a bar behind each value that has a number, per row
    grouped: bool = False  # rows come in groups sharing the first column (e.g. an endpoint)


LineStyle = Literal["solid", "dashed"]
# How an axis maps values: "percentile" (x only) draws percentiles p on a log scale of
# 1 / (1 - p), so the tail (99%, 99.9%, ...) gets as much room as the body.
Scale = Literal["linear", "log", "percentile"]


@dataclass(frozen=True)
class Series:
    """One line of a chart: (x, y) points, a None y breaking it; `key` names whose colour it
    is (a cell's label: one colour per key across the page), `label` what the line is."""

    key: str
    points: list[tuple[float, float | None]]
    label: str = ""
    style: LineStyle = "solid"
    point_labels: list[str] = field(default_factory=list)  # beside each point, e.g. "c=4"
    markers: bool = True


@dataclass(frozen=True)
class Mark:
    """A vertical line across a chart at `x`, e.g. a change point, with a short label."""

    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    """A line chart (HTML only)."""

    title: str
    x_label: str
    y_label: str
    series: list[Series]
    x_scale: Scale = "linear"
    y_scale: Scale = "linear"
    x_ticks: list[tuple[float, str]] = field(default_factory=list)  # empty: the renderer's
    marks: list[Mark] = field(default_factory=list)
    note: str = ""  # under the chart: what its line styles or its choice of data mean


@dataclass(frozen=True)
class Picture:
    """An SVG drawn elsewhere (a --profile window's flame graph): the HTML page shows it inline,
    under `caption`; `link` says where its file is (the other renderers list it in a table)."""

    caption: str
    svg: str
    link: str = ""


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)  # HTML only, after the tables


@dataclass
class Report:
    title: str
    summary: str
    warnings: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
