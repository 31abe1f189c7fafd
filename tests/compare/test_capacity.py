"""--rate-sweep and --slo: the rates, the objective, the knee, against the real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.cells.runner import CellRun, run_cell
from bench.cli import EXIT_USAGE, main
from bench.compare.capacity import knee
from bench.config.objectives import parse_slo, sweep_rates
from bench.report import build, render_html
from bench.results import LatencyMs, SweepPoint
from bench.servers.running import RunningServer


def test_rates_of_a_sweep() -> None:
    assert sweep_rates("100:300:100") == [100, 200, 300]
    assert sweep_rates("50:120:50") == [50, 100]
    assert sweep_rates("5:5:1") == [5]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate-sweep", "100:50:10"], "STOP at least START"),
        (["--rate-sweep", "1:1000000:1"], "more than 100"),
        (["--rate-sweep", "100-200"], "e.g. 100:1000:100"),
        (["--rate-sweep", "10:20:5", "--rate", "5"], "without --rate"),
        (["--rate-sweep", "10:20:5", "--slo", "p99"], "e.g. p99<50ms"),
        (["--slo", "p99<5ms"], "--slo is the objective of a --rate-sweep"),
        (["--rate-sweep", "10:20:5", "--workload", "flow-runs"], "not the flow-runs scenario"),
    ],
)
def test_bad_sweeps_are_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *args]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_objective_and_knee() -> None:
    slo = parse_slo("p99<0.5s")
    assert (slo.percentile, slo.limit_ms, slo.text) == ("p99", 500.0, "p99<500ms")
    fast = LatencyMs(min=1, mean=2, p50=2, p90=3, p99=4, p999=5, max=6)
    assert slo.kept_by(fast) and not parse_slo("p99<4ms").kept_by(fast) and not slo.kept_by(None)

    def point(rate: float, kept: bool) -> SweepPoint:
        return SweepPoint(
            offered_rps=rate, rps=rate, requests=1, latency_ms=fast, rate_held=kept, kept=kept
        )

    assert knee([point(300, True), point(100, True), point(200, False)]) == 100
    assert knee([point(100, False), point(200, True)]) is None


@pytest.mark.slow
def test_a_sweep_finds_the_knee_and_the_report_draws_it(
    cell_run: Callable[..., CellRun], progress: Callable[..., Any], prefect_server: RunningServer
) -> None:
    loose = run_cell(
        cell_run(
            url=prefect_server.base_url,
            workload="health",
            duration_s=1.0,
            warmup_s=0.2,
            concurrency=[16],
            rate_sweep="100:300:100",
            slo="p99<2s",
        ),
        progress(),
    )
    assert loose.status == "ok", loose.error
    assert loose.config.mode == "open" and not loose.endpoints
    (swept,) = loose.sweeps
    # Whether a rate is held depends on this machine's timers too (<= 1% of sends > 2 ms
    # late), so which rate is the knee is not asserted: that the sweep went up the rates and
    # the knee is the one its points say (bench.config.objectives.knee, tested above).
    offered = [p.offered_rps for p in swept.points]
    assert offered == [100, 200, 300][: len(offered)] and len(offered) >= 2
    assert all(p.latency_ms and p.rps > 0.9 * p.offered_rps for p in swept.points)
    assert swept.knee_rps == knee(swept.points)
    assert swept.stopped_early == (len(offered) < 3)

    # an objective no server keeps: missed twice, the third rate is not tried
    tight = run_cell(
        cell_run(
            url=prefect_server.base_url,
            workload="health",
            duration_s=0.3,
            warmup_s=0.1,
            concurrency=[1],
            rate_sweep="20:60:20",
            slo="p50<0.001ms",
        ),
        progress(),
    )
    (missed,) = tight.sweeps
    assert len(missed.points) == 2 and missed.stopped_early and missed.knee_rps is None

    report = build([loose, tight])
    (section,) = [s for s in report.sections if s.title == "Capacity"]
    (table,) = section.tables
    knees = {(row[0].text, row[1].text): [v.text for v in row[2:]] for row in table.rows}
    shown = "-" if swept.knee_rps is None else f"{swept.knee_rps:g}"
    shown = "≥ 300" if swept.knee_rps == 300 else shown
    assert knees[("health", "16")][0] == shown  # ≥: the highest rate swept was kept
    assert knees[("health", "1")][1] == "-"  # not even the lowest
    assert "health c=16: p99 against the offered rate" in render_html(report)
