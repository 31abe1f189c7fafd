"""The Scenarios section: flow-runs and events results, lag, speedups of scenarios."""

from __future__ import annotations

import re

from bench.report import build, collect, render_markdown
from bench.results import Result
from tests.report.helpers import (
    RESOURCES,
    SCENARIO_RESULTS,
    as_zig,
    by_cell,
    column,
    scenario_table,
    terminal_text,
    with_scenarios,
)


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


def test_retried_tries_are_shown_by_step_beside_the_failures() -> None:
    results, _ = collect([SCENARIO_RESULTS])
    # older results: none retried, no table
    assert "### Retried" not in render_markdown(build(results))
    retried = []
    for result in results:
        scenarios = []
        for s in result.scenarios:
            steps = [
                step.model_copy(update={"retries": 3, "retry_s": 6.5})
                if step.name == "create flow_run"
                else step
                for step in s.steps
            ]
            scenarios.append(s.model_copy(update={"steps": steps}))
        retried.append(result.model_copy(update={"scenarios": scenarios}))
    table = scenario_table(build(retried), "Retried")
    cells = {cell.text for row in table.rows for cell in row[2:]}
    assert cells == {"3 (create flow_run×3), 6.5 s", "-"}  # "-": a level a cell did not run


def test_a_scenario_s_problems_are_notes_of_the_section() -> None:
    results, _ = collect([SCENARIO_RESULTS])
    problem = "none of the scenarios begun in the 1 s window finished in it, and none failed"
    first = results[0]
    scenario = first.scenarios[0].model_copy(update={"problems": [problem]})
    marked = first.model_copy(update={"scenarios": [scenario, *first.scenarios[1:]]})
    section = render_markdown(build([marked, *results[1:]])).split("## Scenarios", 1)[1]
    assert f"{scenario.name} c={scenario.concurrency}: {problem}" in section
