"""The workers workload against the real Python Prefect server: workers that poll, heartbeat,
claim the runs the server's scheduler makes and run them, read back; and the servers it cannot
run on (no scheduler, no work pools)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from bench.errors import VerificationError
from bench.results import RunConfig
from bench.runner import CellRun, run_cell
from bench.servers.running import RunningServer
from bench.workloads import workers
from bench.workloads.base import api_client

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

pytestmark = pytest.mark.slow

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]
WORKERS, SPEEDUP, DURATION_S = 2, 30.0, 4.0


def test_workers_claim_and_run_the_runs_the_scheduler_makes(
    cell_run: MakeRun, progress: MakeProgress, prefect_server: RunningServer
) -> None:
    run = cell_run(
        workload="workers",
        url=prefect_server.base_url,
        concurrency=[WORKERS],
        deployments=3,
        speedup=SPEEDUP,
        tasks=2,
        duration_s=DURATION_S,
        warmup_s=1.0,
    )
    view = progress()
    result = run_cell(run, view)
    assert result.status == "ok", result.error
    (s,) = result.scenarios
    assert s.name == "worker poll, 3 deployments" and s.concurrency == WORKERS
    steps = {step.name: step for step in s.steps}
    # each worker polls every 10 s / 30 = 0.33 s, ±30%
    polls = WORKERS * DURATION_S / (workers.POLL_S / SPEEDUP)
    assert 0.6 * polls <= steps["poll"].requests <= 1.4 * polls, steps["poll"]
    assert steps["heartbeat"].requests >= 1  # every round(30 s / 30) = 1 s, on the channel
    # claims counted over the whole measurement, steps in the window: another worker's claim
    # of the same run is lost (ABORT)
    claims = s.counts["claimed"] + s.counts.get("claims_lost", 0)
    assert s.counts["claimed"] >= 1 and 1 <= steps["claim"].requests <= claims
    # every claimed run ran to Completed, its task runs recorded through the events
    assert s.delivery["flow_runs"].recorded >= 1 and s.delivery["flow_runs"].lost == 0
    assert s.delivery["task_runs"].lost == 0
    assert s.counts["task_runs"] >= 2 * s.counts["flow_runs"]  # some cut by the window's end
    timings = {t.name: t for t in s.timings}
    running = timings[workers.RUNNING].latency_ms
    assert timings[workers.CLAIMED].count >= 1 and running is not None
    # the server holds a run claimed ahead of its time (WAIT) until then, not much longer
    assert 0 <= running.p50 < 5_000
    side = s.server_side
    assert side is not None and side["due"] >= 1
    # runs claimed in time leave none unclaimed; under SQLite's 503s (sent again seconds
    # later, as by the real client) some may be; never more than were due
    assert 0 <= side["unclaimed"] <= side["due"]
    assert side["late"] == 0  # the late-runs service marks a run 15 s after its start
    assert any("preparing worker poll" in stage for stage in view.stages)


def test_without_the_scheduler_preparing_fails_saying_so(
    prefect_api_only: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measurement's runs are the scheduler's: a server without its services makes none.
    (The verification's run is made through the API, but without the services its task runs
    are not recorded either, which fails the cell first: hence the workload's own call.)"""
    monkeypatch.setattr(workers, "SCHEDULER_WAIT_S", 2.0)
    config = RunConfig(workload="workers", deployments=3)
    scenario = replace(workers.scenario(config, "no-scheduler"), api_path="")
    with (
        api_client(prefect_api_only.base_url) as client,
        pytest.raises(VerificationError) as caught,
    ):
        workers.prepare(client, scenario, verify=False)
    assert str(caught.value) == (
        "the server's scheduler made 0 runs for 3 scheduled deployments within 2 s: "
        "is its scheduler service running?"
    )


def test_a_server_without_work_pools_fails_the_cell_in_one_line(
    cell_run: MakeRun, progress: MakeProgress, health_only: str
) -> None:
    result = run_cell(cell_run(workload="workers", url=health_only), progress())
    assert result.status == "failed"
    assert "the workers workload needs work pools: POST /work_pools/ answered 404" in (
        result.error or ""
    )
