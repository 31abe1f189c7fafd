"""The three formats: numbers, the Markdown golden files, the terminal view, the HTML page,
and text from results escaped in each.

The Markdown reports are compared with tests/resources/report/report.md.golden (a closed-model
run) and tests/resources/report_open/report.md.golden (an open-model run). After an intended
change of the report, refresh the golden files and review their diff:

    BENCH_UPDATE_GOLDEN=1 nox -s tests -- tests/report/test_renderers.py

Without that variable the golden file is never written."""

from __future__ import annotations

import re

import pytest

from bench.report import build, render_html, render_markdown
from bench.report.numbers import first_line, fmt_errors, fmt_ms, fmt_num, fmt_ratio
from bench.results import Result
from tests.report.helpers import (
    GOLDEN,
    OPEN_GOLDEN,
    RUN,
    UPDATE_GOLDEN,
    by_cell,
    check_html,
    terminal_text,
)


def test_number_formats() -> None:
    assert fmt_num(1234.4) == "1234"
    assert fmt_num(100.2) == "100"
    assert fmt_num(45.63) == "45.6"
    assert fmt_num(3.14159) == "3.14"
    assert fmt_num(0) == "0"
    assert fmt_num(None) == "-"
    assert fmt_ms(3.14159) == "3.14"
    assert fmt_ms(120.0) == "120.00"
    assert fmt_ratio(11.078) == "11.1×"
    assert fmt_errors({}) == "0"
    assert fmt_errors({"disconnect": 3, "503": 12, "500": 0}) == "15 (503×12, disconnect×3)"
    assert first_line("\n  boom  \nTraceback") == "boom"
    assert first_line("x" * 100, width=10) == "x" * 9 + "…"


def test_markdown_matches_golden_file(results: list[Result]) -> None:
    text = render_markdown(build(results))
    if UPDATE_GOLDEN:
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8"), (
        "the Markdown report changed; if intended, run with BENCH_UPDATE_GOLDEN=1 and review"
    )


def test_open_model_markdown_matches_golden_file(open_results: list[Result]) -> None:
    text = render_markdown(build(open_results))
    if UPDATE_GOLDEN:
        OPEN_GOLDEN.write_text(text, encoding="utf-8")
    assert text == OPEN_GOLDEN.read_text(encoding="utf-8"), (
        "the Markdown report changed; if intended, run with BENCH_UPDATE_GOLDEN=1 and review"
    )


def test_markdown_escapes_text_from_results(results: list[Result]) -> None:
    failed = by_cell(results, "python-postgres-redis")
    evil = failed.model_copy(update={"error": "bad | pipe <b>bold</b> *star*"})
    text = render_markdown(build([evil]))
    assert r"bad \| pipe &lt;b&gt;bold&lt;/b&gt; \*star\*" in text
    assert "<b>" not in text


def test_terminal_shows_matrix_endpoints_and_speedup(results: list[Result]) -> None:
    text = terminal_text(build(results))
    for expected in [
        "prefect-bench report",
        "4 results from 1 run: " + RUN,
        # Matrix: totals (one saturated), server metrics, error and skip reason.
        "13985",
        "≥34108",
        "1310",
        "2274",
        "14.2",
        "251",
        "server died while measuring POST flow_runs (exit code 1)",
        "no zig binary",
        # Endpoints: rps, latencies, errors, saturated marks.
        "≥25000",
        "0.15†",
        "88.75",
        "15 (503×12, disconnect×3)",
        "40 (500×40)",
        "python-postgres-redis (failed)",
        # Speedup.
        "zig-sqlite-memory vs python",
        "11.1×",
        "≥16.6×",
        "10.7×",
        "0.10×",
        "the load generator was saturated",
    ]:
        assert expected in text, expected
    assert "Traceback" not in text  # only the first line of an error
    assert "WARNING" not in text


def test_terminal_row_for_ok_cell(results: list[Result]) -> None:
    lines = terminal_text(build(results)).splitlines()
    row = next(ln for ln in lines if "zig" in ln and "sqlite" in ln and "ok" in ln)
    assert row.split()[1:] == [
        "zig",
        "sqlite",
        "memory",
        "ok",
        "13985",
        "≥34108",
        "0.05",
        "25.1",
        "12.0",
    ]


def test_terminal_does_not_interpret_markup_in_results(results: list[Result]) -> None:
    failed = by_cell(results, "python-postgres-redis")
    odd = failed.model_copy(update={"error": "[bold]not markup[/bold] [/]"})
    assert "[bold]not markup[/bold] [/]" in terminal_text(build([odd]))


def test_html_is_well_formed_and_self_contained(results: list[Result]) -> None:
    page = render_html(build(results))
    checker = check_html(page)
    assert "table" in checker.tags and "svg" in checker.tags
    assert "script" not in checker.tags and "link" not in checker.tags
    assert "http://" not in page and "https://" not in page
    for name, value in checker.attrs:
        # The charts' SVG refers to its own parts (markers, clip paths) by #id: on the page.
        if name in {"src", "href", "xlink:href", "action", "srcset"} and not (
            value or ""
        ).startswith("#"):
            pytest.fail(f"reference to another resource: {name}={value}")
    assert not re.search(r"url\((?!#)|@import", page)
    for expected in ["≥34108", "15 (503×12, disconnect×3)", "11.1×", "0.10×", "no zig binary"]:
        assert expected in page, expected


def test_html_escapes_text_from_results(results: list[Result]) -> None:
    failed = by_cell(results, "python-postgres-redis")
    evil = failed.model_copy(update={"error": "<script>alert(1)</script> see http://x"})
    page = render_html(build([evil]))
    check_html(page)
    assert "<script>" not in page and "&lt;script&gt;" in page
