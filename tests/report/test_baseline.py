"""The report's baseline (bench.report.compare.baseline_section) on the one gate: every figure of
the metric table, run against run, tested and corrected as one family as `compare` does; runs
made from stored results with known changes."""

from __future__ import annotations

from pathlib import Path

from bench.compare.metrics import METRICS
from bench.report import collect
from bench.report.compare import TURNED_NOTE, baseline_section
from bench.report.document import Section, Value
from bench.results import LatencyMs, Result
from tests.helpers import REPORT_RUN, RESOURCES

ENDPOINTS = REPORT_RUN / "zig-sqlite-memory.json"
SCENARIOS = RESOURCES / "report_scenarios" / "20261201T102905Z-3fc3" / "python-sqlite-memory.json"


def stored(path: Path) -> Result:
    [result] = collect([path])[0]
    return result


def slower(latency: LatencyMs | None, scale: float) -> LatencyMs | None:
    if latency is None:
        return None
    return latency.model_copy(update={"p50": latency.p50 / scale, "p99": latency.p99 / scale})


def runs(result: Result, scales: list[float], prefix: str, saturated: bool = False) -> list[Result]:
    """Copies of `result` as runs `prefix`0, 1, …: rates times each scale, latencies over it
    (a slower server: fewer requests, each waited on longer)."""
    out = []
    for i, scale in enumerate(scales):
        eps = [
            ep.model_copy(
                update={
                    "rps": ep.rps * scale,
                    "latency_ms": slower(ep.latency_ms, scale),
                    "client_saturated": saturated,
                }
            )
            for ep in result.endpoints
        ]
        scenarios = [
            sc.model_copy(
                update={
                    "per_s": sc.per_s * scale,
                    "duration_ms": slower(sc.duration_ms, scale),
                    "steps": [
                        st.model_copy(update={"latency_ms": slower(st.latency_ms, scale)})
                        for st in sc.steps
                    ],
                }
            )
            for sc in result.scenarios
        ]
        out.append(
            result.model_copy(
                update={"run_id": f"{prefix}{i}", "endpoints": eps, "scenarios": scenarios}
            )
        )
    return out


def cells(section: Section) -> dict[tuple[str, str, str], Value]:
    """The table's values by (figure, level, column header)."""
    [table] = section.tables
    headers = [c.header for c in table.columns]
    return {
        (row[0].text, row[1].text, header): value
        for row in table.rows
        for header, value in zip(headers[2:], row[2:], strict=True)
    }


def test_a_column_per_cell_and_metric_each_read_its_way() -> None:
    zig = stored(ENDPOINTS)
    before = runs(zig, [1.0, 1.01, 0.99, 1.0], "before-")
    after = runs(zig, [0.8, 0.81, 0.79, 0.8], "after-")
    section = baseline_section(before, after)
    [table] = section.tables
    cell = "zig-sqlite-memory (4 vs 4 runs)"
    assert [c.header for c in table.columns] == ["figure", "c"] + [f"{cell} {m}" for m in METRICS]
    found = cells(section)
    rps, p50 = found[("GET flow", "1", f"{cell} rps")], found[("GET flow", "1", f"{cell} p50")]
    # every figure moved alike, so each reaches the smallest p 4 runs a side allow
    assert rps.text == "0.80× p=0.029" and rps.tone == "bad"  # fewer requests: worse
    assert p50.text == "1.25× p=0.029" and p50.tone == "bad"  # longer waits: worse too
    faster = baseline_section(after, before)
    assert cells(faster)[("GET flow", "1", f"{cell} p50")].tone == "good"
    assert found[("total", "1", f"{cell} rps")].text == "0.80× p=0.029"
    assert found[("total", "1", f"{cell} p50")].text == "-"  # latencies do not add up


def test_one_figure_alone_does_not_pass_the_correction() -> None:
    zig = stored(ENDPOINTS)
    before = runs(zig, [1.0, 1.01, 0.99, 1.0], "before-")
    after = runs(zig, [1.0, 0.995, 1.005, 1.01], "after-")
    for run in after:  # GET flow at c=1 alone slows down by a fifth
        run.endpoints[2].rps *= 0.8
    assert (run.endpoints[2].name, run.endpoints[2].concurrency) == ("GET flow", 1)
    found = cells(baseline_section(before, after))
    moved = found[("GET flow", "1", "zig-sqlite-memory (4 vs 4 runs) rps")]
    # its own test gives p = 2/70; among every figure tested at once that is not enough
    assert moved.text.startswith("0.80× ~ p=") and moved.tone == "muted"
    assert float(moved.text.rsplit("p=", 1)[1]) > 0.05


def test_too_few_runs_and_figures_equal_in_every_run() -> None:
    zig = stored(ENDPOINTS)
    found = cells(baseline_section(runs(zig, [1.0] * 3, "b-"), runs(zig, [0.5] * 4, "a-")))
    value = found[("GET flow", "1", "zig-sqlite-memory (4 vs 3 runs) rps")]
    assert value.text == "0.50× ?" and value.tone == "muted"
    same = cells(baseline_section(runs(zig, [1.0] * 4, "b-"), runs(zig, [1.0] * 4, "a-")))
    value = same[("GET flow", "1", "zig-sqlite-memory (4 vs 4 runs) p99")]
    assert value.text == "1.00× ~" and value.tone == "muted"  # nothing varied: not tested


def test_a_saturated_latency_is_a_bound_the_other_way() -> None:
    zig = stored(ENDPOINTS)
    before = runs(zig, [1.0, 1.01, 0.99, 1.0], "before-")
    after = runs(zig, [0.8, 0.81, 0.79, 0.8], "after-", saturated=True)
    section = baseline_section(before, after)
    found = cells(section)
    cell = "zig-sqlite-memory (4 vs 4 runs)"
    assert found[("GET flow", "1", f"{cell} rps")].text.startswith("≥0.80×")  # at least
    assert found[("GET flow", "1", f"{cell} p50")].text.startswith("≤1.25×")  # at most
    assert TURNED_NOTE in section.notes


def test_scenarios_and_their_steps_are_figures_too() -> None:
    flow_runs = stored(SCENARIOS)
    before = runs(flow_runs, [1.0, 1.01, 0.99, 1.0], "before-")
    after = runs(flow_runs, [0.8, 0.81, 0.79, 0.8], "after-")
    found = cells(baseline_section(before, after))
    cell = "python-sqlite-memory (4 vs 4 runs)"
    assert found[("flow run, 10 tasks", "4", f"{cell} rps")].text == "0.80× p=0.029"
    step = found[("flow run, 10 tasks: create flow_run", "1", f"{cell} p99")]
    assert step.text == "1.25× p=0.029"
    assert found[("flow run, 10 tasks: create flow_run", "1", f"{cell} rps")].text == "-"
    assert found[("total", "4", f"{cell} rps")].text == "0.80× p=0.029"
