"""report.json: the report document as data, beside report.md and report.html."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report.files import read_report, write_report
from tests.helpers import REPORT_RUN


def test_report_json_holds_the_document_every_renderer_draws(tmp_path: Path) -> None:
    report, _ = read_report([REPORT_RUN])
    written = write_report(report, tmp_path)
    assert [p.name for p in written] == ["report.md", "report.html", "report.json"]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == 1 and data["title"] == report.title
    assert [s["title"] for s in data["sections"]] == [s.title for s in report.sections]
    matrix = data["sections"][0]["tables"][0]
    assert [c["header"] for c in matrix["columns"]][:3] == ["run", "server", "db"]
    cells = {row[1]["text"] for row in matrix["rows"]}
    assert {"python", "zig"} <= cells, cells
    numbers = [v["number"] for row in matrix["rows"] for v in row if v["number"] is not None]
    assert numbers and all(isinstance(n, int | float) for n in numbers)
    charts = [c for s in data["sections"] for c in s["charts"]]
    assert charts and all(series["points"] for c in charts for series in c["series"])
