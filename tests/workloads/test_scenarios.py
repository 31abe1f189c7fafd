"""Scenarios against the real Python Prefect server: the engine's chains of steps (failures by
step, later steps not sent, websockets, the open model), and the flow-runs workload end to end
with what the server recorded of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bench.cells import runner
from bench.cells.runner import CellRun, run_cell
from bench.config.run import RunConfig
from bench.core.errors import ConfigError
from bench.engine import (
    LoadSpec,
    Scenario,
    StepFailed,
    Target,
    VirtualUser,
    measure_scenario,
    measure_together,
    run_once,
)
from bench.results import ScenarioMeasurement
from bench.servers.running import RunningServer
from bench.workloads import flow_runs

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

pytestmark = pytest.mark.slow

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]
MISSING_FLOW = "00000000-0000-4000-8000-000000000000"


async def health_then_missing_flow(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """Three steps; the second always fails (404), so the third is never sent."""
    await user.http("health", "GET", "/health")
    await user.http("read a missing flow", "GET", f"/flows/{MISSING_FLOW}")
    user.count("third step sent")
    await user.http("health again", "GET", "/health")


async def flow_and_check(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """Create a flow, then read it back by the id the first answer gave."""
    created = await user.http_json(
        "create flow", "POST", "/flows/", {"name": f"scenario-{user.unique()}"}, (200, 201)
    )
    flow = await user.http_json("read flow", "GET", f"/flows/{created['id']}")
    if flow.get("id") != created["id"]:
        raise user.invalid("read flow", f"another flow: {flow}")
    user.count("flows")


async def refused_websocket(user: VirtualUser, params: Mapping[str, Any]) -> None:
    async with user.websocket("open a socket", "/no/such/socket"):
        user.count("opened")


def run(server: RunningServer, fn: Any, concurrency: int = 2, **spec: Any) -> ScenarioMeasurement:
    scenario = Scenario(fn.__name__, fn, api_path=server.api_path)
    load = LoadSpec(concurrency=concurrency, duration_s=1.5, warmup_s=0.3)
    return measure_scenario(Target("127.0.0.1", server.port), scenario, replace(load, **spec))


def test_a_failing_step_fails_the_scenario_there_and_sends_nothing_after(
    prefect_server: RunningServer,
) -> None:
    m = run(prefect_server, health_then_missing_flow)
    assert m.completed == 0 and m.failed["read a missing flow"] > 0
    steps = {s.name: s for s in m.steps}
    assert steps["read a missing flow"].errors == {"404": steps["read a missing flow"].requests}
    assert steps["health"].latency_ms is not None and not steps["health"].errors
    assert "health again" not in steps and "third step sent" not in m.counts
    assert any("HTTP 404" in p for p in m.problems)


def test_steps_use_earlier_answers_and_are_timed_one_by_one(
    prefect_server: RunningServer,
) -> None:
    m = run(prefect_server, flow_and_check, concurrency=3)
    assert m.completed > 0 and m.failed == {}
    assert m.per_s == pytest.approx(m.completed / m.duration_s)
    assert [s.name for s in m.steps] == ["create flow", "read flow"]
    for step in m.steps:
        # each counts where it ends: a user's first step may have ended in the warm-up
        assert step.requests >= m.completed - 3 and step.latency_ms and step.hdr
    assert m.duration_ms is not None
    # a whole scenario takes at least as long as its slowest step's fastest answer
    assert m.duration_ms.max >= max(s.latency_ms.min for s in m.steps if s.latency_ms)
    assert m.counts["flows"] >= m.completed  # counts cover the warmup too
    assert m.client_cpu_s_per_step and m.engine_procs == 1
    assert m.per_s_slices is not None and len(m.per_s_slices) == 3


def test_a_refused_websocket_is_a_failed_step_with_its_status(
    prefect_server: RunningServer,
) -> None:
    m = run(prefect_server, refused_websocket, concurrency=1)
    assert m.completed == 0 and m.failed.get("open a socket", 0) > 0
    (step,) = m.steps
    assert all(kind.startswith("4") for kind in step.errors), step.errors
    assert sum(step.errors.values()) == step.requests
    assert "opened" not in m.counts


def test_open_model_starts_scenarios_at_the_rate(prefect_server: RunningServer) -> None:
    m = run(prefect_server, flow_and_check, concurrency=4, rate=20.0, duration_s=2.0)
    assert m.offered_rps == 20.0 and m.late_starts is not None
    assert 0.6 * 20 <= m.per_s <= 1.2 * 20, m
    assert m.rate_held in (True, False)


def test_flow_runs_cell_records_every_task_run_it_sent(
    cell_run: MakeRun, progress: MakeProgress
) -> None:
    view = progress()
    run = cell_run(workload="flow-runs", tasks=3, duration_s=3.0, warmup_s=0.5, concurrency=[1, 2])
    result = run_cell(run, view)
    assert result.status == "ok", result.error
    assert result.schema_version == 2 and not result.endpoints
    assert [(s.name, s.concurrency) for s in result.scenarios] == [
        ("flow run, 3 tasks", 1),
        ("flow run, 3 tasks", 2),
    ]
    for s in result.scenarios:
        # SQLite refuses writes with 503 "database is locked": the user retries as the client
        # does, and fails only after 6 refusals in a row (over a minute); a retried step may
        # take a whole window (backoff of seconds), so completion is asserted across levels
        assert s.failed == {}, s
        for step in s.steps:
            assert step.retries <= sum(step.errors.values()) + 1, step
        names = [step.name for step in s.steps]
        assert names[:4] == [
            "GET admin/version",
            "GET csrf-token",
            "create flow",
            "create flow_run",
        ]
        assert "task events" in names, names
        # exact: every item sent was recorded, and nothing recorded was not counted as sent
        tasks, runs = s.delivery["task_runs"], s.delivery["flow_runs"]
        assert tasks.sent == s.counts["task_runs"] >= 3 * s.counts["flow_runs"]
        assert tasks.lost == runs.lost == 0
        assert (tasks.recorded, runs.recorded) == (tasks.sent, runs.sent), s.delivery
        assert s.telemetry and "sqlite" in s.telemetry
        # the first task's events of sampled flow runs, followed until queryable
        assert s.lag_probes is not None and s.lag_unresolved is not None
        assert s.lag_ms is None or 0 < s.lag_ms.p50 <= s.lag_ms.p99
    # the checks above that need a completed flow run were made at least once; an event found
    # after the window closed is neither a probe nor unresolved (CI: 2 flow runs completed in
    # the last 0.5 s of a window, after 1.5 s of retries, none probed), so across levels
    assert any(s.completed for s in result.scenarios), result.scenarios
    assert any(s.lag_probes or s.lag_unresolved for s in result.scenarios), result.scenarios
    assert any("verifying the flow-runs scenario once" in stage for stage in view.stages)
    # the real client ran its flow against the same server first, and all of it read back
    assert result.conformance and all(c["ok"] for c in result.conformance["checks"])
    assert result.conformance["traffic"]["requests"]["POST /api/flow_runs/{id}/set_state"] == 2


def test_a_server_that_records_no_task_runs_fails_the_cell_saying_so(
    cell_run: MakeRun,
    progress: MakeProgress,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api_only: RunningServer,
) -> None:
    """Without its services the server takes the events but its task-run recorder is not
    running: the verification run's task runs never appear."""
    monkeypatch.setattr(runner, "DRAIN_TIMEOUT_S", 3.0)
    run = cell_run(workload="flow-runs", tasks=2, url=prefect_api_only.base_url, concurrency=[1])
    result = run_cell(run, progress())
    assert result.status == "failed"
    assert "the server recorded 0 of 2 task runs of one run within 3 s" in (result.error or "")


def test_the_emulated_flow_run_reads_back_like_a_real_one(
    prefect_server: RunningServer,
) -> None:
    """One emulated flow run: the server holds it COMPLETED with its task runs, their states
    from the events, and its logs."""
    scenario = flow_runs.scenario(RunConfig(tasks=2), "readback")
    scenario = Scenario(scenario.name, scenario.run, scenario.params, prefect_server.api_path)
    counts = asyncio.run(run_once(Target("127.0.0.1", prefect_server.port), scenario))
    assert counts == {"flow_runs": 1, "task_runs": 2, "events": 7}
    with httpx.Client(base_url=prefect_server.base_url, timeout=30) as client:
        flows = {"flows": {"name": {"any_": [scenario.params["flow_name"]]}}}
        (run,) = client.post("/flow_runs/filter", json=flows).json()
        assert run["state_type"] == "COMPLETED"
        found = runner._drained(flow_runs.FLOW_RUNS, scenario, client, counts)
        assert found == {"flow_runs": 1, "task_runs": 2}
        tasks = client.post("/task_runs/filter", json=flows).json()
        assert {t["state_type"] for t in tasks} == {"COMPLETED"}
        assert all(t["flow_run_id"] == run["id"] for t in tasks)
        logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}})
        assert len(logs.json()) == 2 + 2


async def spawned_health(user: VirtualUser) -> None:
    await user.http("spawned health", "GET", "/health")
    user.count("spawned")


async def paced_health(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """One step, a span observed, and a chain spawned on a user of its own."""
    await user.http("health", "GET", "/health")
    user.observe("a span", 2_000)
    user.spawn(spawned_health)


async def spawns_a_failure(user: VirtualUser, params: Mapping[str, Any]) -> None:
    async def missing(spawned: VirtualUser) -> None:
        await spawned.http("read a missing flow", "GET", f"/flows/{MISSING_FLOW}")

    user.spawn(missing)


def test_a_paced_scenario_runs_once_per_interval_with_its_spans_and_spawns(
    prefect_server: RunningServer,
) -> None:
    scenario = Scenario("paced", paced_health, api_path=prefect_server.api_path, interval_s=0.2)
    load = LoadSpec(concurrency=2, duration_s=2.0, warmup_s=0.5)
    m = measure_scenario(Target("127.0.0.1", prefect_server.port), scenario, load)
    # unpaced, two users send health hundreds of times a second; paced, 2 users × 10/s
    assert 10 <= m.completed <= 30, m
    (span,) = m.timings
    assert span.name == "a span" and span.count >= m.completed - 2
    assert span.latency_ms is not None and 1.9 <= span.latency_ms.p50 <= 2.1
    steps = {s.name: s for s in m.steps}
    # chains still in flight when the window ends are cancelled: on a busy machine, a
    # latency's worth of them (CI saw 20 of 21); so at least half, not all
    assert steps["spawned health"].requests >= m.completed // 2 and not m.failed
    assert m.counts["spawned"] >= m.completed


async def missing_flow(user: VirtualUser, params: Mapping[str, Any]) -> None:
    await user.http("read a missing flow", "GET", f"/flows/{MISSING_FLOW}", expect=(404,))


def test_scenarios_measured_together_have_their_own_users_and_counts(
    prefect_server: RunningServer,
) -> None:
    health = Scenario("paced", paced_health, api_path=prefect_server.api_path, interval_s=0.2)
    missing = Scenario("missing", missing_flow, api_path=prefect_server.api_path)
    load = LoadSpec(concurrency=99, duration_s=1.0, warmup_s=0.3)
    where = Target("127.0.0.1", prefect_server.port)
    paced, unpaced = measure_together(where, [(health, 2), (missing, 1)], load)
    assert (paced.concurrency, unpaced.concurrency) == (2, 1)
    assert 4 <= paced.completed <= 16, paced  # 2 users × 5/s, as alone
    # one unpaced user, back to back: many more than the paced ones, and only its own steps
    assert unpaced.completed > 2 * paced.completed and not unpaced.failed, unpaced
    assert [s.name for s in unpaced.steps] == ["read a missing flow"]
    assert {s.name for s in paced.steps} == {"health", "spawned health"}
    assert paced.timings and not unpaced.timings
    with pytest.raises(ConfigError, match="closed model"):
        measure_together(where, [(missing, 1)], replace(load, rate=5.0))


def test_run_once_waits_for_what_the_scenario_spawned_and_raises_its_failure(
    prefect_server: RunningServer,
) -> None:
    scenario = Scenario("spawns", spawns_a_failure, api_path=prefect_server.api_path)
    with pytest.raises(StepFailed) as caught:
        asyncio.run(run_once(Target("127.0.0.1", prefect_server.port), scenario))
    assert caught.value.step == "read a missing flow" and caught.value.kind == "404"
