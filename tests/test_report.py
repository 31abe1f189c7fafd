"""Tests of bench.report: collecting results, the three formats, speedups and warnings.

The Markdown reports are compared with tests/resources/report/report.md.golden (a closed-model
run) and tests/resources/report_open/report.md.golden (an open-model run). After an intended
change of the report, refresh the golden files and review their diff:

    BENCH_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_report.py

Without that variable the golden file is never written.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram
from rich.console import Console

from bench.report import (
    Report,
    build,
    collect,
    compare,
    render_html,
    render_markdown,
    render_terminal,
)
from bench.report.aggregate import (
    Repetitions,
    comparability_warnings,
    merge_repetitions,
    repetitions,
    speedup_pairs,
)
from bench.report.document import Table
from bench.report.numbers import first_line, fmt_errors, fmt_ms, fmt_num, fmt_ratio
from bench.results import Result
from bench.results.merge import latency_summary

RESOURCES = Path(__file__).parent / "resources" / "report"
RUN = "20261126T164000Z-3f2a"
RUN_DIR = RESOURCES / RUN
GOLDEN = RESOURCES / "report.md.golden"
# An open-model run (--rate) whose zig cell had server and client on overlapping CPUs.
OPEN_DIR = Path(__file__).parent / "resources" / "report_open"
OPEN_GOLDEN = OPEN_DIR / "report.md.golden"
UPDATE_GOLDEN = os.environ.get("BENCH_UPDATE_GOLDEN") == "1"


@pytest.fixture
def results() -> list[Result]:
    found, warnings = collect([RUN_DIR])
    assert warnings == []
    return found


@pytest.fixture
def open_results() -> list[Result]:
    found, warnings = collect([OPEN_DIR])
    assert warnings == [] and len(found) == 2
    return found


def by_cell(results: list[Result], name: str) -> Result:
    return next(r for r in results if r.cell.name == name)


def terminal_text(report: Report) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for renderable in render_terminal(report):
        console.print(renderable)
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def with_env(result: Result, **changes: object) -> Result:
    return result.model_copy(update={"environment": result.environment.model_copy(update=changes)})


def with_config(result: Result, **changes: object) -> Result:
    return result.model_copy(update={"config": result.config.model_copy(update=changes)})


def speedup_table(results: list[Result]) -> Table:
    report = build(results)
    section = next(s for s in report.sections if s.title.startswith("Speedup"))
    assert section.tables, section.paragraphs
    return section.tables[0]


def column(table: Table, header_start: str) -> dict[tuple[str, str], str]:
    """One column of a table as {(endpoint, c): text}."""
    index = next(i for i, c in enumerate(table.columns) if c.header.startswith(header_start))
    return {(row[0].text, row[1].text): row[index].text for row in table.rows}


# collect


def test_collect_reads_folders_recursively_and_warns_about_bad_files() -> None:
    results, warnings = collect([RESOURCES])

    assert [(r.run_id, r.cell.name, r.status) for r in results] == [
        (RUN, "python-postgres-redis", "failed"),
        (RUN, "python-sqlite-memory", "ok"),
        (RUN, "zig-postgres-redis", "skipped"),
        (RUN, "zig-sqlite-memory", "ok"),
    ]
    # The dot-file, report.json and notes.txt are skipped silently; the bad files are not.
    assert len(warnings) == 3, warnings
    assert "broken.json: not a readable JSON file" in warnings[0]
    assert "future.json: schema_version 99 is not one this version reads" in warnings[1]
    assert "not-a-result.json: not a valid result" in warnings[2]


def test_collect_keeps_unknown_keys() -> None:
    results, _ = collect([RUN_DIR / "python-sqlite-memory.json"])
    assert results[0].model_extra == {"unknown_top_level_key": "kept"}
    assert results[0].endpoints[0].model_extra == {"some_future_key": {"x": 1}}


def test_collect_files_missing_paths_and_duplicates(tmp_path: Path) -> None:
    copy = tmp_path / "copy" / "zig-sqlite-memory.json"
    copy.parent.mkdir()
    shutil.copy(RUN_DIR / "zig-sqlite-memory.json", copy)
    explicit = RUN_DIR / "zig-sqlite-memory.json"

    results, warnings = collect([explicit, RUN_DIR, copy, tmp_path / "nowhere"])

    assert [r.cell.name for r in results] == [
        "python-postgres-redis",
        "python-sqlite-memory",
        "zig-postgres-redis",
        "zig-sqlite-memory",
    ]
    # The file given twice (directly and in its folder) is read once, without a warning.
    assert len(warnings) == 2, warnings
    assert str(tmp_path / "nowhere") in warnings[0] and "no such file" in warnings[0]
    assert str(copy) in warnings[1] and "already read from" in warnings[1]


def test_collect_explicit_file_is_read_even_if_named_like_a_report(tmp_path: Path) -> None:
    shutil.copy(RUN_DIR / "python-sqlite-memory.json", tmp_path / "report.json")
    assert collect([tmp_path]) == ([], [])
    results, warnings = collect([tmp_path / "report.json"])
    assert len(results) == 1 and warnings == []


def test_collect_empty_folder(tmp_path: Path) -> None:
    assert collect([tmp_path]) == ([], [])
    assert collect([]) == ([], [])


# numbers


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


# markdown


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


# terminal


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


# html


class _Checker(HTMLParser):
    """Checks that every non-void element is closed in order; collects attributes."""

    VOID = frozenset({"meta", "br", "hr", "img", "link", "input", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def check_html(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.problems == []
    assert checker.stack == []
    assert page.startswith("<!DOCTYPE html>")
    return checker


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


# speedup


def test_speedup_ratios(results: list[Result]) -> None:
    pairs = speedup_pairs(results)
    assert [(p.other.cell.name, p.base.cell.name) for p in pairs] == [
        ("zig-sqlite-memory", "python-sqlite-memory")
    ]
    ratios = column(speedup_table(results), "zig-sqlite-memory vs python")
    assert ratios == {
        ("GET health", "1"): "11.1×",  # 9000 / 812.4
        ("GET health", "4"): "≥16.6×",  # 25000 (saturated) / 1503.7
        ("GET flow", "1"): "10.0×",  # 4030 / 402.25
        ("GET flow", "4"): "14.0×",  # 9108 / 650.5
        ("POST flow_runs", "1"): "10.0×",  # 954.6 / 95.46
        ("POST flow_runs", "4"): "0×",  # 0 / 120
        ("total", "1"): "10.7×",  # 13984.6 / 1310.11
        ("total", "4"): "≥15.0×",  # 34108 / 2274.2
        ("rss peak", ""): "0.10×",  # 25.1 / 251
    }


def test_speedup_marks_a_saturated_reference_as_upper_bound(results: list[Result]) -> None:
    python = by_cell(results, "python-sqlite-memory")
    eps = [
        ep.model_copy(update={"client_saturated": True}) if ep.name == "GET flow" else ep
        for ep in python.endpoints
    ]
    python = python.model_copy(update={"endpoints": eps})
    zig = by_cell(results, "zig-sqlite-memory")
    ratios = column(speedup_table([python, zig]), "zig")
    assert ratios[("GET flow", "1")] == "≤10.0×"
    assert ratios[("GET health", "4")] == "≥16.6×"
    assert ratios[("total", "4")] == "15.0×†"  # both sides saturated


def test_speedup_totals_only_sum_endpoints_both_measured(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    zig = zig.model_copy(update={"endpoints": [e for e in zig.endpoints if e.name == "GET flow"]})
    ratios = column(speedup_table([by_cell(results, "python-sqlite-memory"), zig]), "zig")
    assert ratios[("total", "1")] == "10.0×"  # GET flow alone: 4030 / 402.25
    assert ratios[("GET health", "1")] == "-"


def test_speedup_prefers_same_run_else_newest_reference(results: list[Result]) -> None:
    python = by_cell(results, "python-sqlite-memory")
    zig = by_cell(results, "zig-sqlite-memory")
    run_b, run_c = "20261127T090000Z-aaaa", "20261128T090000Z-bbbb"
    python_c = python.model_copy(update={"run_id": run_c, "started_at": "2026-11-28T09:00:00Z"})
    zig_b = zig.model_copy(update={"run_id": run_b, "started_at": "2026-11-27T09:00:00Z"})
    pairs = speedup_pairs([python, zig, zig_b, python_c])
    assert [(p.other.run_id, p.base.run_id) for p in pairs] == [(RUN, RUN), (run_b, run_c)]
    headers = [c.header for c in speedup_table([python, zig, zig_b, python_c]).columns[2:]]
    assert headers == [
        f"zig-sqlite-memory vs python (run {RUN})",
        f"zig-sqlite-memory vs python (run {run_b} vs {run_c})",
    ]


def test_speedup_needs_an_ok_reference(results: list[Result]) -> None:
    failed_python = by_cell(results, "python-postgres-redis")
    zig = by_cell(results, "zig-sqlite-memory")
    # Different db/broker: no pair. A failed python cell is never a reference.
    assert speedup_pairs([failed_python, zig]) == []
    moved = zig.model_copy(update={"cell": failed_python.cell.model_copy(update={"server": "zig"})})
    assert speedup_pairs([failed_python, moved]) == []
    assert "Nothing to compare" in render_markdown(build([failed_python, zig]))


# like-for-like warnings


def test_no_warning_for_one_machine_and_one_config(results: list[Result]) -> None:
    assert comparability_warnings(results) == []
    assert "Warning" not in render_markdown(build(results))


def test_warning_for_different_machines(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    changed = [r if r is not zig else with_env(zig, hostname="bench-2") for r in results]
    warnings = comparability_warnings(changed)
    assert len(warnings) == 1
    assert "different machines" in warnings[0] and "bench-2" in warnings[0]
    assert "not like-for-like" in warnings[0]
    report = build(changed)
    assert "different machines" in render_markdown(report)
    assert "different machines" in terminal_text(report)
    assert "different machines" in render_html(report)

    other_cpu = [r if r is not zig else with_env(zig, cpu_model="AMD EPYC") for r in results]
    assert "AMD EPYC" in comparability_warnings(other_cpu)[0]


def test_skipped_cells_do_not_trigger_warnings(results: list[Result]) -> None:
    skipped = by_cell(results, "zig-postgres-redis")
    changed = [r if r is not skipped else with_env(skipped, hostname="elsewhere") for r in results]
    assert comparability_warnings(changed) == []


def test_warning_for_different_settings(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    cases: list[tuple[dict[str, object], str]] = [
        ({"duration_s": 2.0}, "duration_s 2 (1 result) vs 5 (2 results)"),
        ({"concurrency": [1, 4, 16]}, "concurrency 1,4 (2 results) vs 1,4,16 (1 result)"),
        ({"workload": "lifecycle"}, "workload lifecycle (1 result) vs seed (2 results)"),
    ]
    for changes, word in cases:
        changed = [r if r is not zig else with_config(zig, **changes) for r in results]
        warnings = comparability_warnings(changed)
        assert len(warnings) == 1, warnings
        assert "different settings" in warnings[0] and word in warnings[0]
        assert "different settings" in render_markdown(build(changed))


# skipped cells

ZIG_MISSING = (
    "no zig prefect-server given: pass --zig-binary PATH (or set BENCH_ZIG_BINARY), or --zig-src "
    "DIR to build a checkout (or set BENCH_ZIG_SRC)"
)


def skipped_as(result: Result, cell: str, reason: str) -> Result:
    server, db, broker = cell.split("-")
    where = result.cell.model_copy(update={"server": server, "db": db, "broker": broker})
    return result.model_copy(update={"cell": where, "error": reason})


def test_skipped_cells_are_listed_once_below_the_matrix(results: list[Result]) -> None:
    matrix = build(results).sections[0]
    [table] = matrix.tables
    assert [row[4].text for row in table.rows] == ["failed", "ok", "ok"]
    assert table.rows[0][-1].text == "server died while measuring POST flow_runs (exit code 1)"
    assert matrix.notes[0] == (
        "Skipped zig-postgres-redis: no zig binary: pass --zig-binary PATH or set "
        "BENCH_ZIG_BINARY to the prefect-server executable built with zig build "
        "-Doptimize=ReleaseFast"
    )


def test_skipped_cells_are_grouped_by_reason(results: list[Result]) -> None:
    skipped = by_cell(results, "zig-postgres-redis")
    zig = [
        skipped_as(skipped, f"zig-{db}-{broker}", ZIG_MISSING)
        for db in ("sqlite", "postgres")
        for broker in ("memory", "redis")
    ]
    no_postgres = skipped_as(skipped, "python-postgres-redis", "no provider can provide postgres")
    report = build([*zig, no_postgres, by_cell(results, "python-sqlite-memory")])
    assert report.sections[0].notes[:2] == [
        "Skipped zig-postgres-memory, zig-postgres-redis, zig-sqlite-memory, zig-sqlite-redis: "
        + ZIG_MISSING,
        "Skipped python-postgres-redis: no provider can provide postgres",
    ]
    [table] = report.sections[0].tables
    assert [row[1].text for row in table.rows] == ["python"]
    for text in (render_markdown(report), terminal_text(report), render_html(report)):
        assert text.count("zig-sqlite-redis") == 1
        assert text.count("pass --zig-binary PATH") == 1


def test_skipped_cells_of_several_runs_name_their_run(results: list[Result]) -> None:
    skipped = by_cell(results, "zig-postgres-redis")
    again = skipped.model_copy(update={"run_id": "20261127T090000Z-aaaa"})
    assert build([skipped, again]).sections[0].notes == [
        f"Skipped zig-postgres-redis ({RUN}), zig-postgres-redis (20261127T090000Z-aaaa): "
        f"{skipped.error}"
    ]


def test_only_skipped_cells_leave_no_table(results: list[Result]) -> None:
    skipped = by_cell(results, "zig-postgres-redis")
    report = build([skipped])
    matrix = report.sections[0]
    assert matrix.tables == [] and matrix.paragraphs == ["No cell ran: every one was skipped."]
    assert matrix.notes == [f"Skipped zig-postgres-redis: {skipped.error}"]
    check_html(render_html(report))
    assert "No cell ran: every one was skipped." in terminal_text(report)


# edge cases


def test_empty_input_says_so() -> None:
    report = build([])
    assert "No results found." in render_markdown(report)
    assert "No results found." in terminal_text(report)
    page = render_html(report)
    check_html(page)
    assert "No results found." in page


def test_results_without_endpoints_or_latency(results: list[Result]) -> None:
    python = by_cell(results, "python-sqlite-memory").model_copy(update={"endpoints": []})
    skipped = by_cell(results, "zig-postgres-redis")
    report = build([python, skipped])
    for render in (render_markdown, render_html):
        text = render(report)
        assert "No endpoint measurements." in text
        assert "Nothing to compare" in text
    assert "No endpoint measurements." in terminal_text(report)

    zig = by_cell(results, "zig-sqlite-memory")  # POST flow_runs at c=4: latency_ms None
    p99 = build([zig]).sections[1].tables[2]
    assert p99.title == "p99 latency (ms)"
    assert column(p99, "zig")[("POST flow_runs", "4")] == "-"


def test_several_runs_label_columns_with_run_ids(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    later = zig.model_copy(update={"run_id": "20261127T090000Z-aaaa"})
    text = render_markdown(build([zig, later]))
    assert "2 results from 2 runs" in text
    assert f"zig-sqlite-memory ({RUN})" in text
    assert "zig-sqlite-memory (20261127T090000Z-aaaa)" in text


# shared cores


def test_warning_when_server_and_client_share_cpus(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    cases: list[tuple[list[int] | None, list[int] | None, bool]] = [
        ([0], [0, 1], True),
        ([1, 0], [1], True),
        ([0], [1], False),
        (None, [0], False),  # only the client pinned: nothing says where the server ran
        ([0], None, False),
        (None, None, False),  # unpinned: not flagged, whatever the cpu count
    ]
    for server_cpus, client_cpus, warned in cases:
        pinned = with_config(zig, server_cpus=server_cpus, client_cpus=client_cpus)
        changed = [r if r is not zig else pinned for r in results]
        report = build(changed)
        # pinned unlike the others, zig also draws the warning about different settings
        warnings = [w for w in report.warnings if "shared CPUs" in w]
        assert bool(warnings) == warned, (server_cpus, client_cpus, report.warnings)
        if warned:
            assert len(warnings) == 1
            assert "shared CPUs in zig-sqlite-memory" in warnings[0]
            assert (
                f"server on CPUs {','.join(str(c) for c in sorted(server_cpus or []))}"
                in (warnings[0])
            )
            assert "Warning" in render_markdown(report)
            assert "WARNING: The server and the load generator shared CPUs" in terminal_text(report)
            assert "shared CPUs in zig-sqlite-memory" in render_html(report)


def test_shared_cpu_warning_names_every_result_and_its_run(results: list[Result]) -> None:
    python = with_config(by_cell(results, "python-sqlite-memory"), server_cpus=[0], client_cpus=[0])
    zig = by_cell(results, "zig-sqlite-memory")
    later = with_config(zig, server_cpus=[1], client_cpus=[0, 1]).model_copy(
        update={"run_id": "20261127T090000Z-aaaa"}
    )
    warnings = [w for w in build([python, zig, later]).warnings if "shared CPUs" in w]
    assert len(warnings) == 1, warnings
    assert f"python-sqlite-memory ({RUN}): server on CPUs 0, client on CPUs 0" in warnings[0]
    assert (
        "zig-sqlite-memory (20261127T090000Z-aaaa): server on CPUs 1, client on CPUs 0,1"
        in (warnings[0])
    )
    assert f"zig-sqlite-memory ({RUN})" not in warnings[0]


def test_shared_cpu_warning_ignores_results_without_measurements(results: list[Result]) -> None:
    skipped = with_config(by_cell(results, "zig-postgres-redis"), server_cpus=[0], client_cpus=[0])
    assert build([skipped]).warnings == []


# open model


def open_table(results: list[Result]) -> Table | None:
    section = next(s for s in build(results).sections if s.title == "Endpoints")
    return next((t for t in section.tables if t.title and t.title.startswith("Open model")), None)


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


def with_rate_held(result: Result, late_sends: int, rate_held: bool | None) -> Result:
    eps = [
        ep.model_copy(update={"late_sends": late_sends, "rate_held": rate_held})
        for ep in result.endpoints
    ]
    return result.model_copy(update={"endpoints": eps})


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


# significance and changes between runs


def with_slices(result: Result, scale: float, spread: float) -> Result:
    """Every endpoint's rps times `scale`, with four slices spread ±`spread` around it."""
    eps = []
    for ep in result.endpoints:
        rps = ep.rps * scale
        slices = [rps * (1 + spread * d) for d in (-1, -0.5, 0.5, 1)]
        eps.append(ep.model_copy(update={"rps": rps, "rps_slices": slices}))
    return result.model_copy(update={"endpoints": eps})


def later(result: Result, run_id: str, day: int) -> Result:
    return result.model_copy(update={"run_id": run_id, "started_at": f"2026-11-{day}T09:00:00Z"})


def test_rate_change_within_the_noise_of_the_slices(results: list[Result]) -> None:
    health = by_cell(results, "zig-sqlite-memory").endpoints[0]
    steady = with_slices(by_cell(results, "zig-sqlite-memory"), 1.0, 0.01).endpoints[0]
    faster = with_slices(by_cell(results, "zig-sqlite-memory"), 1.2, 0.01).endpoints[0]
    noisy = with_slices(by_cell(results, "zig-sqlite-memory"), 1.02, 0.3).endpoints[0]
    change = compare.rate_change([steady], [faster])
    assert change is not None and change.ratio == pytest.approx(1.2)
    assert change.within_noise is False and change.low is not None and change.low > 1.1
    change = compare.rate_change([steady], [noisy])
    assert change is not None and change.within_noise is True
    change = compare.rate_change([health], [faster])  # no slices on one side: cannot tell
    assert change is not None and change.within_noise is None and change.low is None
    assert compare.rate_change([], [faster]) is None


def test_changes_compare_each_cell_with_its_previous_run(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    python = by_cell(results, "python-sqlite-memory")
    first = with_slices(zig, 1.0, 0.01)
    second = later(with_slices(zig, 0.5, 0.01), "20261127T090000Z-aaaa", 27)
    third = later(with_slices(zig, 0.51, 0.2), "20261128T090000Z-bbbb", 28)
    report = build([first, second, third, python])
    section = next(s for s in report.sections if s.title.startswith("Changes"))
    [table] = section.tables
    header = "zig-sqlite-memory: 20261128T090000Z-bbbb vs 20261127T090000Z-aaaa"
    assert [c.header for c in table.columns[2:]] == [header]  # python ran once: no column
    values = column(table, header)
    assert values[("GET flow", "1")] == "1.02× ~"  # 0.51 / 0.5 with ±20% slices: noise
    assert any(n.startswith("~: within the noise") for n in section.notes)
    two_runs = build([first, second])
    [table] = next(s for s in two_runs.sections if s.title.startswith("Changes")).tables
    values = column(table, table.columns[2].header)
    assert values[("GET flow", "1")] == "0.50×"  # halved, well outside ±1% slices
    assert values[("total", "1")] == "0.50×"
    assert table.rows[0][2].tone == "bad"


def test_no_changes_section_for_a_single_run(results: list[Result]) -> None:
    assert not any(s.title.startswith("Changes") for s in build(results).sections)


def test_speedup_within_the_noise_is_marked(results: list[Result]) -> None:
    python = with_slices(by_cell(results, "python-sqlite-memory"), 1.0, 0.3)
    zig_eps = [  # python's measurements, 3% faster
        ep.model_copy(update={"rps": ep.rps * 1.03, "rps_slices": [r * 1.03 for r in slices]})
        for ep in python.endpoints
        if (slices := ep.rps_slices)
    ]
    zig = by_cell(results, "zig-sqlite-memory").model_copy(update={"endpoints": zig_eps})
    assert column(speedup_table([python, zig]), "zig")[("GET flow", "1")] == "1.03× ~"


# against a baseline of repeated runs


def runs(result: Result, scales: list[float], prefix: str) -> list[Result]:
    """Copies of `result` as runs `prefix`0, 1, … with every rps times each scale."""
    out = []
    for i, scale in enumerate(scales):
        eps = [ep.model_copy(update={"rps": ep.rps * scale}) for ep in result.endpoints]
        out.append(result.model_copy(update={"run_id": f"{prefix}{i}", "endpoints": eps}))
    return out


def baseline_table(baseline: list[Result], results: list[Result]) -> Table:
    section = build(results, baseline).sections[-1]
    assert section.title == "Against the baseline"
    [table] = section.tables
    return table


def test_baseline_comparison_tests_run_against_run(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    before = runs(zig, [1.0, 1.01, 0.99, 1.0], "before-")
    slower = runs(zig, [0.8, 0.81, 0.79, 0.8], "after-")
    values = column(baseline_table(before, slower), "zig-sqlite-memory (4 vs 4 runs)")
    assert values[("GET flow", "1")] == "0.80× p=0.029"  # the smallest p 4 runs a side allow
    assert values[("total", "1")] == "0.80× p=0.029"
    same = runs(zig, [1.02, 0.98, 1.0, 0.99], "again-")
    values = column(baseline_table(before, same), "zig")
    assert values[("GET flow", "1")].startswith("1.00× ~ p=")


def test_baseline_comparison_needs_four_runs_a_side(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    table = baseline_table(runs(zig, [1.0, 1.0, 1.0], "b-"), runs(zig, [0.5] * 4, "a-"))
    assert column(table, "zig-sqlite-memory (4 vs 3 runs)")[("GET flow", "1")] == "0.50× ?"
    assert table.rows[0][2].tone == "muted"


def test_baseline_without_common_cells_says_so(results: list[Result]) -> None:
    python = by_cell(results, "python-sqlite-memory")
    section = build([python], [by_cell(results, "zig-sqlite-memory")]).sections[-1]
    assert section.title == "Against the baseline" and not section.tables
    assert section.paragraphs[0].startswith("Nothing to compare")


# -- scenario workloads ------------------------------------------------------------------------

SCENARIO_RESULTS = Path(__file__).parent / "resources" / "report_scenarios"


def test_scenarios_section_shows_rates_failures_losses_steps_and_backend_work() -> None:
    """Two real flow-runs results (schema 2): python on sqlite × memory, whose 503s fail
    scenarios at 'create flow_run', and on postgres × redis."""
    results, warnings = collect([SCENARIO_RESULTS])
    assert warnings == [] and {r.schema_version for r in results} == {2}
    text = render_markdown(build(results))
    assert "## Scenarios" in text
    section = text.split("## Scenarios", 1)[1]
    assert "Completed scenarios per second" in section
    assert "create flow\\_run×" in section  # failures counted by their step
    assert "0 / 70 task runs" in section
    assert "flow run, 10 tasks: step latency p50 / p99 (ms)" in section
    assert "| task events |" in section
    assert "pg xact" in section and "redis cmd" in section
    # flow-runs results have no lag: no lag table, and the rate keeps its generic title
    assert "Event lag" not in section and "### Completed scenarios per second\n" in section
    assert "No endpoint measurements." in text  # a scenario-only run has no endpoint rows
    matrix = text.split("## Matrix", 1)[1].split("## Endpoints", 1)[0]
    assert "scenarios/s c=1" in matrix and "total rps" not in matrix


def test_a_version_1_result_still_reads_without_scenarios() -> None:
    results, _ = collect([RESOURCES])
    assert results and {r.schema_version for r in results} == {1}
    assert all(r.scenarios == [] for r in results)
    assert "## Scenarios" not in render_markdown(build(results))


# The events workload: two hand-made results of one run (python × sqlite × memory and × redis,
# --rate 100 over 1 and 4 websockets) with lag, probes and delivery of events and task runs; the
# redis cell at c=4 has 3 unresolved probes.
EVENTS_RESULTS = Path(__file__).parent / "resources" / "report_events"


@pytest.fixture
def events_results() -> list[Result]:
    found, warnings = collect([EVENTS_RESULTS])
    assert warnings == [] and {r.schema_version for r in found} == {2}
    assert {r.config.workload for r in found} == {"events"}
    assert [r.cell.name for r in found] == ["python-sqlite-memory", "python-sqlite-redis"]
    return found


def scenario_table(report: Report, title_start: str) -> Table:
    section = next(s for s in report.sections if s.title == "Scenarios")
    return next(t for t in section.tables if t.title and t.title.startswith(title_start))


def with_scenarios(result: Result, **changes: object) -> Result:
    """`result` with `changes` made to every one of its scenarios."""
    return result.model_copy(
        update={"scenarios": [s.model_copy(update=changes) for s in result.scenarios]}
    )


def as_zig(result: Result, scale: float) -> Result:
    """`result` as if the zig server had measured it, every scenario's rate times `scale`."""
    scenarios = [
        s.model_copy(
            update={
                "per_s": s.per_s * scale,
                "per_s_slices": [x * scale for x in s.per_s_slices or []] or None,
            }
        )
        for s in result.scenarios
    ]
    cell = result.cell.model_copy(update={"server": "zig"})
    return result.model_copy(update={"cell": cell, "scenarios": scenarios})


def test_events_lag_of_each_broker_side_by_side(events_results: list[Result]) -> None:
    text = render_markdown(build(events_results))
    section = text.split("## Scenarios", 1)[1].split("\n## ", 1)[0]
    lag = section.split("### Event lag p50 / p99 (ms)", 1)[1].split("###", 1)[0]
    assert "| scenario | c | python-sqlite-memory | python-sqlite-redis |" in lag
    assert (
        "| task-run event | 1 | 612.35 / 1480.70 (46 probes) | 845.25 / 2310.40 (44 probes) |"
        in lag
    )
    terminal = terminal_text(build(events_results))
    assert re.search(r"655\.87 / 1522\.69 \(45 probes\) +1187\.84 / 3407\.87", terminal)
    # one scenario is one event: the rate says so
    assert "### Completed scenarios per second (events/s)" in section
    # delivery by kind, events as the other kinds
    assert "| task-run event | 1 | 0 / 604 events, 0 / 202 task runs |" in section


def test_events_unresolved_probes_are_a_warning(events_results: list[Result]) -> None:
    report = build(events_results)
    values = scenario_table(report, "Event lag")
    redis_c4 = values.rows[1][3]
    assert redis_c4.text == "1187.84 / 3407.87 (41 probes, 3 unresolved)"
    assert redis_c4.tone == "bad" and values.rows[1][2].tone == ""
    assert "unresolved: sampled events not found" in render_markdown(report)

    resolved = [with_scenarios(r, lag_unresolved=0) for r in events_results]
    text = render_markdown(build(resolved))
    assert "unresolved" not in text and "(41 probes) |" in text


def test_events_lag_without_any_probe_found(events_results: list[Result]) -> None:
    """A lag longer than the window: no probe found, every one unresolved."""
    memory, redis = events_results
    late = with_scenarios(redis, lag_ms=None, lag_probes=0, lag_unresolved=44)
    report = build([memory, late])
    cell = scenario_table(report, "Event lag").rows[0][3]
    assert (cell.text, cell.tone, cell.number) == ("- (0 probes, 44 unresolved)", "bad", None)


def test_scenario_columns_keep_a_servers_brokers_together(events_results: list[Result]) -> None:
    zig = [as_zig(r, 1.0) for r in events_results]
    table = scenario_table(build(events_results + zig), "Event lag")
    assert [c.header for c in table.columns[2:]] == [
        "python-sqlite-memory",
        "python-sqlite-redis",
        "zig-sqlite-memory",
        "zig-sqlite-redis",
    ]


def test_scenario_speedup_within_the_noise_is_marked(events_results: list[Result]) -> None:
    memory, redis = events_results
    # ±2% slices: 1% faster is within their noise, 2.5× is not
    report = build([memory, redis, as_zig(memory, 1.01), as_zig(redis, 2.5)])
    table = scenario_table(report, "Scenarios per second over python")
    assert table.title == "Scenarios per second over python (events/s)"
    assert column(table, "zig-sqlite-memory")[("task-run event", "1")] == "1.01× ~"
    assert column(table, "zig-sqlite-redis")[("task-run event", "1")] == "2.50×"
    section = next(s for s in report.sections if s.title == "Scenarios")
    assert any(n.startswith("~: within the noise") for n in section.notes)
    # without slices on a side no interval, so no mark
    bare = with_scenarios(as_zig(memory, 1.01), per_s_slices=None)
    table = scenario_table(build([memory, bare]), "Scenarios per second over python")
    assert column(table, "zig")[("task-run event", "1")] == "1.01×"


def test_scenario_speedup_marks_a_saturated_reference_as_upper_bound(
    events_results: list[Result],
) -> None:
    memory = by_cell(events_results, "python-sqlite-memory")
    report = build([with_scenarios(memory, client_saturated=True), as_zig(memory, 2.0)])
    table = scenario_table(report, "Scenarios per second over python")
    assert column(table, "zig")[("task-run event", "1")] == "≤2.00×"
    section = next(s for s in report.sections if s.title == "Scenarios")
    assert any("the ratio is a bound" in n for n in section.notes)


# -- repetitions -------------------------------------------------------------------------------

# One run with --repeat 3 of python and zig × sqlite × memory, repetition 1 of each discarded as
# a warm-up (its rates at 0.8×), 2 and 3 at 1.0× and 1.04×, with histograms (see its README).
REPEAT_RESULTS = Path(__file__).parent / "resources" / "report_repeat"


@pytest.fixture
def repeated() -> list[Result]:
    found, warnings = collect([REPEAT_RESULTS])
    assert warnings == []
    return found


def repetition_of(results: list[Result], cell: str, k: int) -> Result:
    return next(r for r in results if r.cell.name == cell and r.repetition == k)


def test_collect_keeps_every_repetition(repeated: list[Result], tmp_path: Path) -> None:
    assert [(r.cell.name, r.repetition, r.discarded) for r in repeated] == [
        ("python-sqlite-memory", 1, "warm-up repetition"),
        ("python-sqlite-memory", 2, None),
        ("python-sqlite-memory", 3, None),
        ("zig-sqlite-memory", 1, "warm-up repetition"),
        ("zig-sqlite-memory", 2, None),
        ("zig-sqlite-memory", 3, None),
    ]
    run = REPEAT_RESULTS / "20261201T090000Z-r3p7"
    copy = tmp_path / "copy.json"
    shutil.copy(run / "zig-sqlite-memory.2.json", copy)
    found, warnings = collect([run, copy])
    assert len(found) == 6
    assert (
        len(warnings) == 1
        and "cell zig-sqlite-memory repetition 2 is already read" in (warnings[0])
    )


def test_merged_repetitions_count_only_the_kept_ones(repeated: list[Result]) -> None:
    merged = merge_repetitions(repeated)
    assert [(r.cell.name, r.repetition) for r in merged] == [
        ("python-sqlite-memory", None),
        ("zig-sqlite-memory", None),
    ]
    python = merged[0]
    two, three = (repetition_of(repeated, "python-sqlite-memory", k) for k in (2, 3))
    for ep, a, b in zip(python.endpoints, two.endpoints, three.endpoints, strict=True):
        assert ep.rps == pytest.approx((a.rps + b.rps) / 2)  # the warm-up's 0.8× left out
        assert ep.requests == a.requests + b.requests
        assert ep.errors == {k: a.errors.get(k, 0) + b.errors.get(k, 0) for k in ep.errors}
        assert ep.duration_s == a.duration_s + b.duration_s
        assert ep.rps_slices == [*(a.rps_slices or []), *(b.rps_slices or [])]
        # latencies from the added histograms: between the two, and exactly the merged one's
        assert ep.latency_ms is not None and a.latency_ms and b.latency_ms
        low, high = sorted((a.latency_ms.p99, b.latency_ms.p99))
        assert low <= ep.latency_ms.p99 <= high
        assert ep.hdr is not None and a.hdr and b.hdr
        hist = HdrHistogram.decode(a.hdr)
        hist.add(HdrHistogram.decode(b.hdr))
        assert ep.latency_ms == latency_summary(hist)
    assert python.started_at == two.started_at and python.finished_at == three.finished_at


def test_merged_repetition_is_saturated_if_any_was(repeated: list[Result]) -> None:
    zig = repetition_of(repeated, "zig-sqlite-memory", 2)
    flags = [ep.client_saturated for ep in zig.endpoints]
    assert flags.count(True) == 1  # GET health c=4, in every repetition
    eps = [
        ep.model_copy(update={"client_saturated": ep.name == "GET flow"}) for ep in zig.endpoints
    ]
    changed = [r if r is not zig else zig.model_copy(update={"endpoints": eps}) for r in repeated]
    [_, merged] = merge_repetitions(changed)
    assert [ep.client_saturated for ep in merged.endpoints] == [
        False,
        True,  # GET health c=4: saturated in repetition 3
        True,  # GET flow: saturated in repetition 2
        True,
        False,
        False,
    ]


def test_a_single_result_passes_through_merging_unchanged(results: list[Result]) -> None:
    merged = merge_repetitions(results)
    assert len(merged) == len(results)
    assert all(m is r for m, r in zip(merged, results, strict=True))


def test_without_histograms_merged_latency_is_weighted_by_successes(
    results: list[Result],
) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    second = zig.model_copy(
        update={
            "repetition": 2,
            "endpoints": [
                ep.model_copy(
                    update={
                        "requests": ep.requests * 3,
                        "latency_ms": ep.latency_ms
                        and ep.latency_ms.model_copy(update={"p50": ep.latency_ms.p50 * 2}),
                    }
                )
                for ep in zig.endpoints
            ],
        }
    )
    [merged] = merge_repetitions([zig.model_copy(update={"repetition": 1}), second])
    health = merged.endpoints[0]
    assert health.hdr is None and health.latency_ms is not None
    assert health.latency_ms.p50 == pytest.approx(0.1 * (1 + 3 * 2) / 4)  # weights 1 and 3


def test_failed_and_discarded_repetitions_are_left_out_and_named(repeated: list[Result]) -> None:
    python = [r for r in repeated if r.cell.name == "python-sqlite-memory"]
    failed = python[2].model_copy(update={"status": "failed", "error": "server died\nTraceback"})
    reps = repetitions([*python[:2], failed])
    assert reps[("20261201T090000Z-r3p7", "python-sqlite-memory")] == Repetitions(
        counted=1, discarded=((1, "warm-up repetition"),), failed=((3, "failed: server died"),)
    )
    [merged] = merge_repetitions([*python[:2], failed])
    assert merged is python[1]  # the only one counted
    matrix = build([*python[:2], failed]).sections[0]
    assert (
        "Left out of every figure: python-sqlite-memory repetition 1: discarded, warm-up "
        "repetition; python-sqlite-memory repetition 3: failed: server died." in matrix.notes
    )
    # every repetition discarded: the cell shows as failed, saying so
    [gone] = merge_repetitions(python[:1])
    assert gone.status == "failed" and gone.endpoints == []
    assert gone.error == "every repetition was discarded: warm-up repetition"


def test_report_says_how_many_repetitions_each_cell_stands_on(repeated: list[Result]) -> None:
    report = build(repeated)
    assert report.summary == (
        "2 results from 1 run: 20261201T090000Z-r3p7. (6 result files: the repetitions of each "
        "cell are merged.)"
    )
    matrix = report.sections[0]
    [table] = matrix.tables
    assert [c.header for c in table.columns[4:7]] == ["status", "n", "total rps c=1"]
    assert [row[5].text for row in table.rows] == ["2", "2"]
    assert any(n.startswith("n: the repetitions of the cell in its run") for n in matrix.notes)
    assert any(
        "zig-sqlite-memory repetition 1: discarded, warm-up repetition" in n for n in matrix.notes
    )
    text = render_markdown(report)
    assert "| status | n |" in text
    # figures stand on the merged results: python's GET health at c=1 is (812.4 + 844.9) / 2
    assert "| GET health | 1 | 829 |" in text
    # the speedup pairs the merged cells
    ratios = column(speedup_table(repeated), "zig-sqlite-memory vs python")
    assert ratios[("GET health", "1")] == "11.1×"  # 9180 / 828.65


def test_no_repetition_column_for_cells_that_ran_once(results: list[Result]) -> None:
    [table] = build(results).sections[0].tables
    assert "n" not in [c.header for c in table.columns]


def test_baseline_compares_merged_runs(results: list[Result]) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    before = runs(zig, [1.0, 1.01, 0.99, 1.0], "before-")
    # each later run repeated twice, at 0.7× and 0.9×: merged, 0.8×, one value per run
    after = [
        r.model_copy(
            update={
                "repetition": k,
                "endpoints": [ep.model_copy(update={"rps": ep.rps * scale}) for ep in r.endpoints],
            }
        )
        for r in runs(zig, [1.0] * 4, "after-")
        for k, scale in ((1, 0.7), (2, 0.9))
    ]
    values = column(baseline_table(before, after), "zig-sqlite-memory (4 vs 4 runs)")
    assert values[("GET flow", "1")] == "0.80× p=0.029"
