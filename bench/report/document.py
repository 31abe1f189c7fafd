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


@dataclass(frozen=True)
class Chart:
    """A line chart: one series per cell over the concurrency levels (HTML only)."""

    title: str
    x_label: str
    x_values: list[str]
    y_label: str
    series: list[tuple[str, list[float | None]]]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    title: str
    summary: str
    warnings: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
