"""The report's Cost section: instructions per request side by side, and a cost cell's timed
figures (of a server under callgrind) kept out of the wall-clock sections."""

from __future__ import annotations

from pathlib import Path

from bench.report.cost import fmt_instructions
from bench.report.markdown import render_markdown
from bench.report.tables import build
from bench.results import load_result
from tests.compare.test_cost_compare import cost_results
from tests.compare.test_gate import repetitions


def test_cost_cells_side_by_side_and_out_of_the_timed_sections(tmp_path: Path) -> None:
    before = load_result(next(cost_results(tmp_path / "b", 0, seed=1).rglob("*.json")))
    after = load_result(next(cost_results(tmp_path / "a", 20_000, seed=2).rglob("*.json")))
    after.run_id = "20261207T000000Z-aaaa"
    timed = repetitions(1)[0]
    timed.run_id = "20261207T010000Z-bbbb"
    text = render_markdown(build([before, after, timed]))
    cost = text.split("## Cost", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in cost.splitlines() if line.startswith("| GET health |"))
    # the first cell's figure, then the second's with its ratio to the first: +2%
    health = [next(e for e in r.endpoints if e.name == "GET health") for r in (before, after)]
    ratio = health[1].cost.per_request / health[0].cost.per_request  # type: ignore[union-attr]
    assert 1.015 < ratio < 1.025
    assert row.startswith("| GET health | 1.00 M ±") and "1.02 M" in row
    assert f"({ratio:.3f}×)" in row
    endpoints = text.split("## Endpoints", 1)[1].split("\n## ", 1)[0]
    assert "20261207T010000Z-bbbb" in endpoints and "20261207T000000Z-aaaa" not in endpoints
    matrix = text.split("## Matrix", 1)[1].split("\n## ", 1)[0]
    assert "| cost |" in matrix  # not the rate of a server under callgrind


def test_instructions_read_with_three_digits() -> None:
    assert [fmt_instructions(v) for v in (999_960, 24_018_343, 45_600, 512, 2.5e9)] == [
        "1.00 M",
        "24.02 M",
        "45.6 k",
        "512",
        "2.50 G",
    ]
