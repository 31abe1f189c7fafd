"""Tests of bench.report.scale: the Data at scale section, each endpoint's latency against the
flow runs preloaded (--preload N), one series per cell over runs made at different N.

tests/resources/report_scale holds hand-made results (its README says which numbers are where):
python × sqlite × memory and python × postgres × redis at N = 1,000, 10,000 and 100,000, a
second sqlite run at 10,000 and a failed postgres run at 100,000.
"""

from __future__ import annotations

import re

import pytest

from bench.report import build, collect, render_html, render_markdown
from bench.report.compare import latest_changes
from bench.report.document import Section, Table
from bench.report.scale import ERRORS_MARK, TITLE, scale_section
from bench.results import Preload, Result
from tests.helpers import REPORT_RUN, RESOURCES

SCALE = RESOURCES / "report_scale"
SQLITE, POSTGRES = "python-sqlite-memory", "python-postgres-redis"
COUNT, FILTER = "count flow_runs", "filter flow_runs (dashboard)"


@pytest.fixture
def results() -> list[Result]:
    found, warnings = collect([SCALE])
    assert warnings == [] and len(found) == 8
    return found


def section_of(results: list[Result]) -> Section:
    section = scale_section(results)
    assert section is not None
    return section


def table(section: Section, title_start: str) -> Table:
    return next(t for t in section.tables if t.title and t.title.startswith(title_start))


def cells(table: Table) -> dict[tuple[str, str], dict[str, str]]:
    """{(endpoint, c): {column header: text}}."""
    headers = [c.header for c in table.columns]
    return {
        (row[0].text, row[1].text): dict(zip(headers, (v.text for v in row), strict=True))
        for row in table.rows
    }


def with_preload(result: Result, **changes: object) -> Result:
    assert result.preload is not None
    return result.model_copy(update={"preload": result.preload.model_copy(update=changes)})


def test_the_latency_tables(results: list[Result]) -> None:
    section = section_of(results)
    assert section.title == TITLE
    p50 = table(section, "p50")
    # series in the report's order of cells (by db), each at its N rising, then its ratio
    assert [c.header for c in p50.columns] == [
        "endpoint",
        "c",
        f"{POSTGRES} N=1,000",
        f"{POSTGRES} N=10,000",
        f"{POSTGRES} N=100,000",
        f"{POSTGRES} N=100,000 / N=1,000",
        f"{SQLITE} N=1,000",
        f"{SQLITE} N=10,000",
        f"{SQLITE} N=100,000",
        f"{SQLITE} N=100,000 / N=1,000",
    ]
    rows = cells(p50)
    assert list(rows) == [(COUNT, "4"), (FILTER, "4")]
    count = rows[(COUNT, "4")]
    # sqlite at 10,000: two runs (4.0 and 6.0), their median
    assert [count[f"{SQLITE} N={n}"] for n in ("1,000", "10,000", "100,000")] == [
        "2.00",
        "5.00",
        "20.00",
    ]
    assert count[f"{SQLITE} N=100,000 / N=1,000"] == "10.0×"
    # postgres at 100,000: the failed run (p50 500 ms) is left out
    assert [count[f"{POSTGRES} N={n}"] for n in ("1,000", "10,000", "100,000")] == [
        "1.50",
        "2.00",
        "6.00",
    ]
    assert count[f"{POSTGRES} N=100,000 / N=1,000"] == "4.00×"

    p99 = cells(table(section, "p99"))
    assert p99[(FILTER, "4")][f"{SQLITE} N=10,000"] == "18.00"  # median of 16 and 20
    assert p99[(FILTER, "4")][f"{SQLITE} N=100,000 / N=1,000"] == "15.0×"  # 120 / 8
    # the postgres filter answered timeouts at 100,000: marked, its latency of successes only
    assert p99[(FILTER, "4")][f"{POSTGRES} N=100,000"] == f"12.00{ERRORS_MARK}"
    assert any(
        note.startswith(f"{ERRORS_MARK}: the endpoint answered errors") for note in section.notes
    )
    assert any("median" in note for note in section.notes)


def test_the_median_of_three_runs(results: list[Result]) -> None:
    sqlite_10k = [
        r for r in results if r.cell.name == SQLITE and r.preload and r.preload.flow_runs == 10_000
    ]
    assert len(sqlite_10k) == 2
    # a third run at 10,000 with every latency at 100 ms: the median is the middle run's
    third = sqlite_10k[0].model_copy(
        update={
            "run_id": "20261210T130000Z-a005",
            "endpoints": [
                e.model_copy(
                    update={
                        "latency_ms": e.latency_ms.model_copy(update={"p50": 100.0, "p99": 100.0})
                    }
                )
                for e in sqlite_10k[0].endpoints
                if e.latency_ms is not None
            ],
        }
    )
    section = section_of([*results, third])
    assert cells(table(section, "p50"))[(COUNT, "4")][f"{SQLITE} N=10,000"] == "6.00"  # 4, 6, 100
    assert (
        cells(table(section, "p99"))[(COUNT, "4")][f"{SQLITE} N=10,000"] == "14.00"
    )  # 10, 14, 100
    held = table(section, "What the databases held")
    runs = {(row[0].text, row[1].text): row[2].text for row in held.rows}
    assert runs[(SQLITE, "10,000")] == "3" and runs[(POSTGRES, "100,000")] == "1"


def test_what_the_databases_held(results: list[Result]) -> None:
    held = table(section_of(results), "What the databases held")
    assert [c.header for c in held.columns] == [
        "cell",
        "flow runs (N)",
        "runs",
        "task runs",
        "logs",
        "events",
        "flows",
        "deployments",
    ]
    first = [v.text for v in held.rows[0]]
    assert first == [POSTGRES, "1,000", "1", "2,000", "10,000", "7,000", "5", "10"]
    assert len(held.rows) == 6
    note = next(n for n in section_of(results).notes if n.startswith("N: "))
    assert "flows=5,deployments=2,tasks=2,logs=10,days=7" in note


def test_one_n_only_is_no_section(results: list[Result]) -> None:
    at_1k = [r for r in results if r.preload and r.preload.flow_runs == 1000]
    assert len(at_1k) == 2
    assert scale_section(at_1k) is None
    assert TITLE not in [s.title for s in build(at_1k).sections]


def test_a_series_at_one_n_is_left_out_and_named(results: list[Result]) -> None:
    kept = [
        r for r in results if r.cell.name == SQLITE or (r.preload and r.preload.flow_runs == 1000)
    ]
    section = section_of(kept)
    assert not any(c.header.startswith(POSTGRES) for c in table(section, "p50").columns)
    assert f"Left out, measured at one N only: {POSTGRES} (N=1,000)." in section.notes


def test_failed_results_are_left_out(results: list[Result]) -> None:
    # without the ok postgres run at 100,000 only the failed one is there: postgres stops at 10k
    kept = [
        r
        for r in results
        if not (
            r.cell.name == POSTGRES
            and r.status == "ok"
            and r.preload
            and r.preload.flow_runs == 100_000
        )
    ]
    p50 = table(section_of(kept), "p50")
    headers = [c.header for c in p50.columns]
    assert f"{POSTGRES} N=100,000" not in headers
    assert f"{POSTGRES} N=10,000 / N=1,000" in headers
    assert cells(p50)[(COUNT, "4")][f"{POSTGRES} N=10,000 / N=1,000"] == "1.33×"  # 2.0 / 1.5


def test_different_shapes_are_warned_about(results: list[Result]) -> None:
    assert not any(p.startswith("Warning") for p in section_of(results).paragraphs)
    other = "flows=5,deployments=2,tasks=5,logs=10,days=7"
    changed = [
        with_preload(r, shape=other)
        if r.cell.name == SQLITE and r.preload and r.preload.flow_runs == 100_000
        else r
        for r in results
    ]
    section = section_of(changed)
    warning = section.paragraphs[0]
    assert warning.startswith("Warning: the databases were preloaded with different shapes")
    assert f"{other} ({SQLITE} N=100,000)" in warning
    assert f"flows=5,deployments=2,tasks=2,logs=10,days=7 ({POSTGRES} N=1,000" in warning
    held = table(section, "What the databases held")
    assert held.columns[-1].header == "shape"
    assert held.rows[-1][-1].text == other
    assert "each its own shape (see the warning)" in next(
        n for n in section.notes if n.startswith("N: ")
    )
    # the markdown report says so too
    assert "preloaded with different shapes" in render_markdown(build(changed))


def test_the_section_follows_capacity_in_the_report(results: list[Result]) -> None:
    titles = [s.title for s in build(results).sections]
    assert TITLE in titles
    assert titles.index(TITLE) == titles.index("Speedup over python") - 1
    text = render_markdown(build(results))
    assert "## Data at scale" in text and "### p50 latency (ms) by flow runs preloaded" in text


def test_the_charts_on_the_page(results: list[Result]) -> None:
    page = render_html(build(results))
    names = re.findall(r'<svg [^>]*aria-label="([^"]*)"', page)
    scale = [n for n in names if n.endswith("against flow runs preloaded")]
    assert scale == [
        f"{COUNT} c=4: latency against flow runs preloaded",
        f"{FILTER} c=4: latency against flow runs preloaded",
    ]
    svg = re.search(rf'<svg [^>]*aria-label="{re.escape(scale[0])}".*?</svg>', page, re.S)
    assert svg is not None
    for tick in ("1k", "10k", "100k"):
        assert f">{tick}</text>" in svg[0], tick
    assert ">flow runs preloaded (N)</text>" in svg[0]
    assert "stroke-dasharray" in svg[0]  # the p99 lines
    assert f"</span>{POSTGRES}" in page and f"</span>{SQLITE}" in page  # the section's legend
    assert "<svg" not in render_markdown(build(results))


def test_the_chart_series(results: list[Result]) -> None:
    chart = section_of(results).charts[0]
    assert chart.x_scale == "log" and chart.y_scale == "log"
    assert [(s.key, s.label, s.style) for s in chart.series] == [
        (POSTGRES, "p50", "solid"),
        (POSTGRES, "p99", "dashed"),
        (SQLITE, "p50", "solid"),
        (SQLITE, "p99", "dashed"),
    ]
    assert chart.series[2].points == [(1000.0, 2.0), (10000.0, 5.0), (100000.0, 20.0)]


def test_results_without_preload_have_no_section() -> None:
    old, warnings = collect([REPORT_RUN])
    assert warnings == [] and old and all(r.preload is None for r in old)
    assert scale_section(old) is None
    assert TITLE not in [s.title for s in build(old).sections]


def test_repetitions_are_merged_before_the_median(results: list[Result]) -> None:
    """Repetitions of a cell in a run are one point (merged), not runs of the median."""
    base = next(
        r for r in results if r.cell.name == SQLITE and r.preload and r.preload.flow_runs == 1000
    )
    reps = [
        base.model_copy(
            update={
                "repetition": k,
                "endpoints": [
                    e.model_copy(
                        update={"latency_ms": e.latency_ms.model_copy(update={"p50": p50})}
                    )
                    for e in base.endpoints
                    if e.latency_ms is not None
                ],
            }
        )
        for k, p50 in ((1, 2.0), (2, 4.0))
    ]
    others = [r for r in results if r is not base]
    section = section_of([*others, *reps])
    held = {
        (row[0].text, row[1].text): row[2].text
        for row in table(section, "What the databases held").rows
    }
    assert held[(SQLITE, "1,000")] == "1"
    # no histograms: the merge weighs the two summaries by their successes (equal here)
    assert cells(table(section, "p50"))[(COUNT, "4")][f"{SQLITE} N=1,000"] == "3.00"


def test_preload_loads_from_the_resource(results: list[Result]) -> None:
    r = results[0]
    assert isinstance(r.preload, Preload) and r.config.preload == r.preload.flow_runs


def test_changes_since_the_previous_run_pair_only_runs_at_the_same_n(
    results: list[Result],
) -> None:
    """A run at N=100,000 after one at 10,000 is not a change of the cell: another series."""
    pairs = latest_changes(results)
    assert [(p.new.cell.name, p.old.config.preload, p.new.config.preload) for p in pairs] == [
        (SQLITE, 10_000, 10_000)
    ]


def test_a_level_measured_at_one_n_only_draws_no_chart(results: list[Result]) -> None:
    """Its rows stay in the tables; a chart against N needs two N."""
    only = [r for r in results if r.preload and r.preload.flow_runs == 1_000]
    extra = only[0].model_copy(deep=True)
    for e in extra.endpoints:
        e.concurrency = 99
    section = section_of([*results, extra])
    titles = [chart.title for chart in section.charts]
    assert not any("c=99" in t for t in titles) and titles
    assert any(row[1].text == "99" for row in table(section, "p50").rows)
