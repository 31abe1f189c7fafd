"""The report as data (report.json): the document every renderer draws, for a program to read
instead of parsing Markdown. A flame graph's SVG is left out (it is a file of its own, named by
its `link`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bench.report.document import Picture, Report

# Bumped when a key of the document is renamed or changes meaning (adding one is not).
REPORT_SCHEMA_VERSION = 1


def render_json(report: Report) -> str:
    """`report` as JSON: its sections, their tables (each value's text, number and tone),
    charts (series of points), notes and pictures (caption and link)."""
    return (
        json.dumps(
            {"schema_version": REPORT_SCHEMA_VERSION, **_plain(report)}, indent=1, allow_nan=False
        )
        + "\n"
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Picture):
        return {"caption": value.caption, "link": value.link}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN: JSON has none
        return None
    return value
