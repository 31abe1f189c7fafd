"""Tests of the report on the workers workload: the delays its scenarios observed (timings) and
what the server's own services did (server_side), as tables of the Scenarios section and merged
over repetitions; and of the tables, units and notes a workload declares beside it
(bench.workloads.reported), drawn by a report that names no workload. The results are made
here, their histograms as the engine makes them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hdrh.histogram import HdrHistogram

from bench.config.run import RunConfig
from bench.engine.model import new_histogram
from bench.report import build, collect, render_markdown
from bench.report.aggregate import merge_repetitions
from bench.report.document import Section, Table
from bench.results import Cell, Environment, Result, ScenarioResult, StepResult, Timing
from bench.results.merge import latency_summary
from bench.workloads import WORKLOADS
from bench.workloads.mixed import MIXED_NOTE
from bench.workloads.reported import LevelTable, Reading, ScenarioReport
from bench.workloads.workers import DELAYS, SERVER_SIDE, WORKERS
from tests.helpers import RESOURCES

RUN = "20261202T100000Z-w0rk"
SCENARIO = "worker"
CLAIMED = "scheduled → claimed"
RUNNING = "scheduled → running"
DELAYS_NOTE, SERVER_SIDE_NOTE = DELAYS.note, SERVER_SIDE.note
DELAYS_TITLE = f"{SCENARIO}: delays p50 / p99 (ms)"
SERVER_TITLE = "What the server's services did"
# Real flow-runs results: no timings, no server_side.
FLOW_RUNS = RESOURCES / "report_scenarios"
ENVIRONMENT = Environment(
    cpu_model="Test CPU",
    cpu_count=4,
    kernel="6.1.0",
    python="3.11.9",
    bench_version="0.0.0",
    hostname="bench-host",
)


def encoded(values_ms: list[float]) -> tuple[HdrHistogram, str]:
    """A µs histogram of `values_ms` and its encoding, as the engine stores it."""
    hist = new_histogram()
    for value in values_ms:
        hist.record_value(round(value * 1000))
    return hist, hist.encode().decode("ascii")


def timing(name: str, values_ms: list[float]) -> Timing:
    hist, hdr = encoded(values_ms)
    return Timing(name=name, count=len(values_ms), latency_ms=latency_summary(hist), hdr=hdr)


def scenario(
    concurrency: int,
    timings: list[Timing],
    server_side: dict[str, int] | None,
    name: str = SCENARIO,
) -> ScenarioResult:
    hist, hdr = encoded([20.0, 40.0])
    step = StepResult(name="poll work pool", requests=2, latency_ms=latency_summary(hist), hdr=hdr)
    return ScenarioResult(
        name=name,
        concurrency=concurrency,
        duration_s=5.0,
        completed=2,
        per_s=0.4,
        duration_ms=latency_summary(hist),
        hdr=hdr,
        steps=[step],
        timings=timings,
        server_side=server_side,
    )


def result(
    cell: str,
    scenarios: list[ScenarioResult],
    workload: str = "workers",
    repetition: int | None = None,
) -> Result:
    server, db, broker = cell.split("-")
    return Result(
        run_id=RUN,
        cell=Cell(server=server, db=db, broker=broker),
        status="ok",
        started_at="2026-12-02T10:00:00Z",
        config=RunConfig(workload=workload, concurrency=[1, 4]),
        environment=ENVIRONMENT,
        scenarios=scenarios,
        repetition=repetition,
    )


def scenarios_section(results: list[Result]) -> Section:
    return next(s for s in build(results).sections if s.title == "Scenarios")


def table(section: Section, title: str) -> Table:
    return next(t for t in section.tables if t.title == title)


def rows(t: Table) -> list[list[str]]:
    return [[v.text for v in row] for row in t.rows]


def workers_results() -> list[Result]:
    """python and zig × sqlite × memory at c=1 and 4; zig observed no running span at c=4 and
    read nothing back at c=1."""
    python = result(
        "python-sqlite-memory",
        [
            scenario(
                1,
                [timing(CLAIMED, [float(v) for v in range(1, 101)]), timing(RUNNING, [5.0] * 10)],
                {"due": 120, "unclaimed": 3, "late": 0},
            ),
            scenario(
                4,
                [timing(CLAIMED, [2.0] * 10), timing(RUNNING, [7.0] * 10)],
                {"due": 480, "unclaimed": 12, "late": 5},
            ),
        ],
    )
    zig = result(
        "zig-sqlite-memory",
        [
            scenario(1, [timing(CLAIMED, [3.0] * 10), timing(RUNNING, [4.0] * 10)], None),
            scenario(4, [timing(CLAIMED, [1.0] * 10)], {"due": 470, "unclaimed": 0, "late": 1}),
        ],
    )
    return [python, zig]


def test_delays_table_shows_each_timings_p50_and_p99() -> None:
    section = scenarios_section(workers_results())
    delays = table(section, DELAYS_TITLE)
    assert [c.header for c in delays.columns] == [
        "delay",
        "c",
        "python-sqlite-memory",
        "zig-sqlite-memory",
    ]
    # 1..100 ms: p50 and p99 as HdrHistogram's 3 significant digits place them
    assert rows(delays) == [
        [CLAIMED, "1", "50.02 / 99.01", "3.00 / 3.00"],
        [CLAIMED, "4", "2.00 / 2.00", "1.00 / 1.00"],
        [RUNNING, "1", "5.00 / 5.00", "4.00 / 4.00"],
        [RUNNING, "4", "7.00 / 7.00", "-"],  # zig observed none at c=4
    ]
    assert delays.rows[0][2].number == pytest.approx(50.015)
    assert DELAYS_NOTE in section.notes
    # right after the scenario's step latencies
    titles = [t.title for t in section.tables]
    assert (
        titles.index(DELAYS_TITLE) == titles.index(f"{SCENARIO}: step latency p50 / p99 (ms)") + 1
    )


def test_a_scenario_without_timings_gets_no_delays_table() -> None:
    workers = workers_results()[0]
    flow_runs = result(
        "python-sqlite-redis",
        [scenario(1, [], None, name="flow run, 10 tasks")],
        workload="flow-runs",
    )
    section = scenarios_section([workers, flow_runs])
    titles = [t.title for t in section.tables]
    assert DELAYS_TITLE in titles
    assert "flow run, 10 tasks: delays p50 / p99 (ms)" not in titles
    # the workers' server-side rows only: the flow-runs scenario read nothing back
    assert {row[0] for row in rows(table(section, SERVER_TITLE))} == {SCENARIO}

    alone = scenarios_section([flow_runs])
    assert not any("delays" in (t.title or "") for t in alone.tables)
    assert SERVER_TITLE not in [t.title for t in alone.tables]
    assert DELAYS_NOTE not in alone.notes and SERVER_SIDE_NOTE not in alone.notes


def test_flow_runs_results_have_no_delays_or_server_side() -> None:
    results, warnings = collect([FLOW_RUNS])
    assert warnings == [] and {r.config.workload for r in results} == {"flow-runs"}
    text = render_markdown(build(results))
    assert "step latency p50 / p99 (ms)" in text  # the section is there
    assert "delays p50 / p99" not in text
    assert SERVER_TITLE not in text and "scheduled → claimed" not in text


def test_server_side_table_shows_the_counts() -> None:
    section = scenarios_section(workers_results())
    server = table(section, SERVER_TITLE)
    assert [c.header for c in server.columns] == [
        "scenario",
        "c",
        "what",
        "python-sqlite-memory",
        "zig-sqlite-memory",
    ]
    assert rows(server) == [
        [SCENARIO, "1", "due", "120", "-"],  # zig read nothing back at c=1
        [SCENARIO, "1", "unclaimed", "3", "-"],
        [SCENARIO, "1", "late", "0", "-"],
        [SCENARIO, "4", "due", "480", "470"],
        [SCENARIO, "4", "unclaimed", "12", "0"],
        [SCENARIO, "4", "late", "5", "1"],
    ]
    assert server.rows[3][4].number == 470
    assert SERVER_SIDE_NOTE in section.notes
    markdown = render_markdown(build(workers_results()))
    assert "| worker | 4 | due | 480 | 470 |" in markdown


def test_merged_repetitions_add_timing_histograms_and_sum_server_side() -> None:
    # 100 claims at 10 ms, then 300 at 30 ms: the added histograms' p50 is 30 ms, where the
    # mean of the two p50s would be 20 and their mean weighted by count 25.
    first_claimed = timing(CLAIMED, [10.0] * 100)
    second_claimed = timing(CLAIMED, [30.0] * 300)
    first = result(
        "python-sqlite-memory",
        [scenario(1, [first_claimed], {"due": 120, "unclaimed": 3, "late": 0})],
        repetition=1,
    )
    second = result(
        "python-sqlite-memory",
        [
            scenario(
                1,
                # the running span seen in the second repetition only, and listed first
                [timing(RUNNING, [50.0] * 4), second_claimed],
                {"due": 100, "unclaimed": 0, "late": 2, "cancelled": 1},
            )
        ],
        repetition=2,
    )
    [merged] = merge_repetitions([first, second])
    [s] = merged.scenarios
    assert [t.name for t in s.timings] == [CLAIMED, RUNNING]  # as first seen
    claimed, running = s.timings
    assert claimed.count == 400 and running.count == 4
    assert claimed.latency_ms is not None and claimed.latency_ms.p50 == pytest.approx(30.015)
    assert claimed.hdr is not None and first_claimed.hdr and second_claimed.hdr
    assert HdrHistogram.decode(claimed.hdr).get_total_count() == 400
    added = HdrHistogram.decode(first_claimed.hdr)
    added.add(HdrHistogram.decode(second_claimed.hdr))
    assert claimed.latency_ms == latency_summary(added)
    assert running.latency_ms is not None and running.latency_ms.p50 == pytest.approx(50.015)
    assert s.server_side == {"due": 220, "unclaimed": 3, "late": 2, "cancelled": 1}

    # the report shows the merged figures
    section = scenarios_section([first, second])
    assert rows(table(section, DELAYS_TITLE))[0] == [CLAIMED, "1", "30.02 / 30.02"]
    assert rows(table(section, SERVER_TITLE))[0] == [SCENARIO, "1", "due", "220"]


def test_merged_server_side_is_none_only_when_no_repetition_read_it() -> None:
    def merged_side(*sides: dict[str, int] | None) -> dict[str, int] | None:
        runs = [
            result("python-sqlite-memory", [scenario(1, [], side)], repetition=k)
            for k, side in enumerate(sides, 1)
        ]
        [merged] = merge_repetitions(runs)
        return merged.scenarios[0].server_side

    assert merged_side(None, None) is None
    assert merged_side(None, {"due": 7, "late": 1}) == {"due": 7, "late": 1}
    assert merged_side({"due": 7}, {"due": 5}) == {"due": 12}


def test_a_mixed_runs_writers_and_readers_are_rows_of_their_own_with_a_note() -> None:
    writers, readers = "flow run, 2 tasks, beside 2 ui readers", "ui reads, beside 1 writer"
    mixed = result(
        "python-sqlite-memory",
        [scenario(1, [], None, name=writers), scenario(2, [], None, name=readers)],
        workload="mixed",
    )
    section = scenarios_section([mixed])
    completed = rows(table(section, "Completed scenarios per second"))
    assert [row[:2] for row in completed] == [[writers, "1"], [readers, "2"]]
    assert MIXED_NOTE in section.notes
    assert MIXED_NOTE not in scenarios_section(workers_results()).notes


def claims_lost(measured: ScenarioResult) -> Reading | None:
    lost = measured.counts.get("claims_lost")
    return None if lost is None else Reading(amounts=((lost, "lost"),), bad=lost > 0)


CLAIMS = LevelTable("Claims lost", claims_lost, note="Claims lost: ...", bad_note="Lost: ...")


def test_a_new_workload_brings_its_tables_unit_and_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A workload declared outside the report, with a table of a count its scenarios make:
    the report draws it, its unit and its notes, knowing nothing of it."""
    claims = replace(
        WORKERS,
        name="claims",
        report=ScenarioReport(unit="claims/s", tables=(CLAIMS,), notes=("claims: ...",)),
    )
    monkeypatch.setitem(WORKLOADS, claims.name, claims)
    measured = scenario(1, [], None).model_copy(update={"counts": {"claims_lost": 3}})
    mine = result("python-postgres-memory", [measured], workload="claims")
    section = scenarios_section([mine])
    titles = [t.title for t in section.tables]
    assert "Completed scenarios per second (claims/s)" in titles
    cell = table(section, "Claims lost").rows[0][2]
    assert (cell.text, cell.tone, cell.number) == ("3.00 lost", "bad", None)
    declared = ["Claims lost: ...", "Lost: ...", "claims: ..."]
    assert [n for n in section.notes if n.endswith(": ...")] == declared
    # only what it declares: not the tables of the workload it was copied from
    assert DELAYS_TITLE not in titles and SERVER_TITLE not in titles

    # beside workers results: their cells show "-" in its table, its unit is not theirs
    both = scenarios_section([mine, *workers_results()])
    claims_table = table(both, "Claims lost")
    shown = {
        column.header: value.text
        for column, value in zip(claims_table.columns[2:], claims_table.rows[0][2:], strict=True)
    }
    assert shown == {
        "python-postgres-memory": "3.00 lost",
        "python-sqlite-memory": "-",
        "zig-sqlite-memory": "-",
    }
    assert "Completed scenarios per second" in [t.title for t in both.tables]
    assert DELAYS_TITLE in [t.title for t in both.tables]


def test_a_result_of_a_workload_no_longer_known_shows_what_its_data_holds() -> None:
    """A result written by a version whose workload is gone: every table its data fills, as
    before the workloads declared them, and no workload's note."""
    gone = [
        r.model_copy(update={"config": r.config.model_copy(update={"workload": "gone"})})
        for r in workers_results()
    ]
    section = scenarios_section(gone)
    titles = [t.title for t in section.tables]
    assert DELAYS_TITLE in titles and SERVER_TITLE in titles
    assert rows(table(section, SERVER_TITLE)) == rows(
        table(scenarios_section(workers_results()), SERVER_TITLE)
    )
    assert MIXED_NOTE not in section.notes
