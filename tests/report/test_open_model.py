"""The open model's table: offered and achieved rate, late sends, whether the rate held."""

from __future__ import annotations

from bench.report import build, render_html, render_markdown
from bench.results import Result
from tests.report.helpers import by_cell, column, open_table, terminal_text, with_rate_held


def test_open_model_shows_offered_and_achieved_rate_and_late_sends(
    open_results: list[Result],
) -> None:
    table = open_table(open_results)
    assert table is not None
    assert column(table, "python") == {
        ("GET health", "16"): "500 / 500, 0 late",
        ("POST flow_runs", "16"): "≥118 / 500, 1904 late",  # saturated: a lower bound
    }
    assert column(table, "zig") == {
        ("GET health", "16"): "500 / 500, 0 late",
        ("POST flow_runs", "16"): "500 / 500, 2 late",
    }
    tones = {(row[0].text, row[2].tone) for row in table.rows}
    assert tones == {("GET health", ""), ("POST flow_runs", "bad")}  # 118 of 500: not held
    report = build(open_results)
    for text in (render_markdown(report), terminal_text(report)):
        assert "≥118 / 500, 1904 late" in text
        assert "Open model: requests were sent on a fixed schedule" in text
    assert "≥118 / 500, 1904 late" in render_html(report)


def test_open_model_rate_from_config_when_endpoints_lack_it(open_results: list[Result]) -> None:
    zig = by_cell(open_results, "zig-sqlite-memory")
    bare = [ep.model_copy(update={"offered_rps": None, "late_sends": None}) for ep in zig.endpoints]
    zig = zig.model_copy(update={"endpoints": bare})
    table = open_table([zig])
    assert table is not None
    assert column(table, "zig")[("GET health", "16")] == "500 / 500"


def test_closed_model_has_no_open_model_table(results: list[Result]) -> None:
    assert open_table(results) is None
    assert "Open model" not in render_markdown(build(results))


def test_open_model_rate_held_is_the_engines(open_results: list[Result]) -> None:
    # 500 of 500 achieved, but 100 of ~2500 sends late: the engine says the rate was not held.
    zig = with_rate_held(by_cell(open_results, "zig-sqlite-memory"), 100, False)
    table = open_table([zig])
    assert table is not None
    assert [(row[2].text, row[2].tone) for row in table.rows] == [
        ("500 / 500, 100 late", "bad"),
        ("500 / 500, 100 late", "bad"),
    ]
    [note] = [n for n in build([zig]).sections[1].notes if n.startswith("Open model")]
    assert note.endswith(
        "an achieved rate below 95% of the offered one, or more than 1% of the scheduled sends "
        "late, means the rate was not held."
    )


def test_open_model_without_stored_rate_held_judges_the_achieved_rate(
    open_results: list[Result],
) -> None:
    # Older results lack rate_held: 500 of 500 holds, whatever the late sends.
    zig = with_rate_held(by_cell(open_results, "zig-sqlite-memory"), 100, None)
    python = by_cell(open_results, "python-sqlite-memory")
    table = open_table([python, zig])
    assert table is not None
    assert [row[3].tone for row in table.rows] == ["", ""]
    assert [row[2].tone for row in table.rows] == ["", "bad"]  # 118 of 500
    notes = build([python, zig]).sections[1].notes
    assert any(n.endswith("of the offered one means the rate was not held.") for n in notes)
    stored = with_rate_held(zig, 0, True)
    notes = build([python, stored]).sections[1].notes
    assert any(
        "late (late sends not counted for results that do not record rate_held), means" in n
        for n in notes
    )
