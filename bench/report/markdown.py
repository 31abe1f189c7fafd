"""The report as GitHub-flavoured Markdown text."""

from __future__ import annotations

import re

from bench.report.document import Report, Table

# Characters that Markdown (or a GFM table) would otherwise interpret.
_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def escape(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def _table(table: Table) -> list[str]:
    lines = [f"### {escape(table.title)}", ""] if table.title else []
    lines.append("| " + " | ".join(escape(c.header) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if c.numeric else "---" for c in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(escape(v.text) for v in row) + " |")
    lines.append("")
    return lines


def render_markdown(report: Report) -> str:
    """`report` as a Markdown document (report.md)."""
    lines = [f"# {escape(report.title)}", "", escape(report.summary), ""]
    for warning in report.warnings:
        lines += [f"> **Warning:** {escape(warning)}", ""]
    for section in report.sections:
        lines += [f"## {escape(section.title)}", ""]
        for paragraph in section.paragraphs:
            lines += [escape(paragraph), ""]
        for table in section.tables:
            lines += _table(table)
        for note in section.notes:
            lines += [f"_{escape(note)}_", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
