"""The matrix and its speedups, the warnings (machines, settings, shared CPUs) and the skipped
cells."""

from __future__ import annotations

import pytest

from bench.report import build, render_html, render_markdown
from bench.report.aggregate import comparability_warnings, speedup_pairs
from bench.results import Result
from tests.report.helpers import (
    RUN,
    ZIG_MISSING,
    by_cell,
    check_html,
    column,
    skipped_as,
    speedup_table,
    terminal_text,
    with_config,
    with_env,
)


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


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"duration_s": 2.0}, "duration_s 2 (1 result) vs 5 (2 results)"),
        ({"concurrency": [1, 4, 16]}, "concurrency 1,4 (2 results) vs 1,4,16 (1 result)"),
        ({"workload": "lifecycle"}, "workload lifecycle (1 result) vs seed (2 results)"),
    ],
)
def test_warning_for_different_settings(
    results: list[Result], changes: dict[str, object], word: str
) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    changed = [r if r is not zig else with_config(zig, **changes) for r in results]
    warnings = comparability_warnings(changed)
    assert len(warnings) == 1, warnings
    assert "different settings" in warnings[0] and word in warnings[0]
    assert "different settings" in render_markdown(build(changed))


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


@pytest.mark.parametrize(
    ("server_cpus", "client_cpus", "warned"),
    [
        ([0], [0, 1], True),
        ([1, 0], [1], True),
        ([0], [1], False),
        (None, [0], False),  # only the client pinned: nothing says where the server ran
        ([0], None, False),
        (None, None, False),  # unpinned: not flagged, whatever the cpu count
    ],
)
def test_warning_when_server_and_client_share_cpus(
    results: list[Result],
    server_cpus: list[int] | None,
    client_cpus: list[int] | None,
    warned: bool,
) -> None:
    zig = by_cell(results, "zig-sqlite-memory")
    pinned = with_config(zig, server_cpus=server_cpus, client_cpus=client_cpus)
    changed = [r if r is not zig else pinned for r in results]
    report = build(changed)
    # pinned unlike the others, zig also draws the warning about different settings
    warnings = [w for w in report.warnings if "shared CPUs" in w]
    assert bool(warnings) == warned, report.warnings
    if warned:
        assert len(warnings) == 1
        assert "shared CPUs in zig-sqlite-memory" in warnings[0]
        assert (
            f"server on CPUs {','.join(str(c) for c in sorted(server_cpus or []))}" in (warnings[0])
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
