"""The report as rich renderables; the caller prints them."""

from __future__ import annotations

from rich import box
from rich.console import RenderableType
from rich.table import Table as RichTable
from rich.text import Text

from bench.report.document import Report, Table, Tone

STYLES: dict[Tone, str] = {
    "": "",
    "ok": "green",
    "failed": "red",
    "skipped": "yellow",
    "good": "green",
    "bad": "red",
    "muted": "dim",
}


def _table(table: Table) -> RichTable:
    out = RichTable(
        title=Text(table.title, style="bold") if table.title else None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        header_style="bold",
    )
    for column in table.columns:
        out.add_column(Text(column.header), justify="right" if column.numeric else "left")
    for i, row in enumerate(table.rows):
        cells = [Text(v.text, style=STYLES[v.tone]) for v in row]
        end_section = False
        if table.grouped:
            # The group's name on its first row only, and a rule between groups.
            if i > 0 and row[0].text == table.rows[i - 1][0].text:
                cells[0] = Text("")
            end_section = i + 1 < len(table.rows) and table.rows[i + 1][0].text != row[0].text
        out.add_row(*cells, end_section=end_section)
    return out


def render_terminal(report: Report) -> list[RenderableType]:
    """Rich renderables (title, warnings, tables) for `report`, to print one after another."""
    out: list[RenderableType] = [Text(report.title, style="bold underline"), Text(report.summary)]
    out += [Text(f"WARNING: {w}", style="bold yellow") for w in report.warnings]
    for section in report.sections:
        out.append(Text(f"\n{section.title}", style="bold"))
        out += [Text(p) for p in section.paragraphs]
        out += [_table(t) for t in section.tables]
        out += [Text(n, style="dim") for n in section.notes]
    return out
