"""The workers workload against the real Python Prefect server: workers that poll, heartbeat,
claim the runs the server's scheduler makes and run them, read back; and the servers it cannot
run on (no scheduler, no work pools)."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from bench.cells.runner import CellRun, run_cell
from bench.config.run import RunConfig
from bench.conformance.proxy import TrafficCounts, counting_proxy
from bench.conformance.real_client import client_environ
from bench.core.errors import VerificationError
from bench.core.process import ManagedProcess, wait_until
from bench.engine import Target, run_once
from bench.servers.running import RunningServer
from bench.workloads import workers
from bench.workloads.base import api_client, created_id

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


# The flow the real worker's flow-run process runs: the emulated run's shape (TASKS tasks).
REAL_FLOW = """
from prefect import flow, task


@task
def step(index: int) -> int:
    return index


@flow
def bench_flow(tasks: int = {tasks}) -> list[int]:
    return [step(index) for index in range(tasks)]
"""
REAL_TASKS = 2
REAL_WORKER_TIMEOUT_S = 120.0


def _real_worker_traffic(server: RunningServer, workdir: Path) -> TrafficCounts:
    """What a real `prefect worker start --run-once` sends, through the counting proxy, for one
    run of a deployment made as `run_deployment` makes it; its flow-run process included."""
    (workdir / "bench_flow.py").write_text(REAL_FLOW.format(tasks=REAL_TASKS))
    pool = f"real-pool-{uuid.uuid4().hex[:8]}"
    with api_client(server.base_url) as client:
        created_id(client.post("/work_pools/", json={"name": pool, "type": "process"}), "pool")
        flow_id = created_id(client.post("/flows/", json={"name": "bench-flow"}), "flow")
        where = {"directory": str(workdir)}
        body = {
            "name": "real",
            "flow_id": flow_id,
            "work_pool_name": pool,
            "entrypoint": "bench_flow.py:bench_flow",
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": where}],
        }
        deployment_id = created_id(client.post("/deployments/", json=body), "deployment")
        path = f"/deployments/{deployment_id}/create_flow_run"
        run_id = created_id(client.post(path, json={}), "flow run")
        with counting_proxy(server.base_url) as (proxy_url, counter):
            argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
            argv += ["--type", "process", "--run-once", "--limit", "1"]
            env = client_environ(proxy_url, workdir / "prefect-home")
            worker = ManagedProcess(argv, env=env, cwd=workdir, log_path=workdir / "worker.log")
            try:
                wait_until(
                    lambda: worker.exit_code() is not None,
                    timeout_s=REAL_WORKER_TIMEOUT_S,
                    interval_s=0.2,
                )
            finally:
                worker.stop()
            state = client.get(f"/flow_runs/{run_id}").json()["state_type"]
            assert worker.exit_code() == 0 and state == "COMPLETED", worker.log_tail()
            return counter.snapshot()


def test_the_emulated_worker_sends_what_the_real_worker_sends(
    prefect_server: RunningServer, tmp_path: Path
) -> None:
    """One run of a deployment, claimed and run by the real worker and by the emulation,
    counted by the same proxy in front of the same server: the same kinds of requests,
    websockets and messages, but for what the emulation leaves out (workers.py says why)."""
    real = _real_worker_traffic(prefect_server, tmp_path)
    scenario = workers.scenario(RunConfig(workload="workers", tasks=REAL_TASKS), "compared")
    with (
        api_client(prefect_server.base_url) as client,
        counting_proxy(prefect_server.base_url) as (proxy_url, counter),
    ):
        proxy = urlsplit(proxy_url)
        assert proxy.hostname and proxy.port
        prepared = workers.prepare(client, replace(scenario, api_path=proxy.path), True)
        asyncio.run(run_once(Target(proxy.hostname, proxy.port), prepared))
        mine = counter.snapshot()
    real_kinds, my_kinds = _kinds(real, "real-pool-"), _kinds(mine, "bench-pool-")
    # sent by both every HEARTBEAT_S (30 s): by whichever side's run lasts that long, as the
    # real worker's did in a clean-clone CI run on a slow machine
    for kinds in (real_kinds, my_kinds):
        kinds["messages"].discard("worker.heartbeat.v1")
    for what, left_out in workers.LEFT_OUT.items():
        # nothing the real worker does not send, and all it sends but what is left out
        assert my_kinds[what] <= real_kinds[what], (what, my_kinds[what] - real_kinds[what])
        assert real_kinds[what] - my_kinds[what] == left_out, what
    assert real.problems == mine.problems == []


def _kinds(traffic: TrafficCounts, pool_prefix: str) -> dict[str, set[str]]:
    """What `traffic` holds of each kind, named apart from the API's path and the pool's name
    (the proxy replaces ids, not names)."""

    def named(text: str) -> str:
        text = text.replace("/api/", "/", 1)
        return re.sub(rf"{pool_prefix}[\w-]+", "{pool}", text)

    return {
        "requests": {named(r) for r in traffic.requests},
        "websockets": {named(w) for w in traffic.websockets},
        "messages": set(traffic.messages),
    }
