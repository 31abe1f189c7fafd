"""What a running flow writes: task runs, state changes, log batches, and a worker's polls.

These are the requests that reach the database and, for state changes, the event broker, so
they show what the db × broker dimensions of the matrix change. Each request stands alone
(the engine repeats one request per endpoint), so a state change is forced: a RUNNING flow run
set to RUNNING again, which orchestration rules would otherwise reject.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from bench.workloads.base import Endpoint, Fixtures, Workload, created_id, json_check
from bench.workloads.seed import PENDING, create_flow_run

RUNNING = {"type": "RUNNING", "name": "Running"}
LOGS_PER_BATCH = 10


@json_check()
def check_created_task_run(data: Any, fixtures: Fixtures) -> str | None:
    if not isinstance(data, dict) or data.get("flow_run_id") != fixtures["flow_run_id"]:
        return f"created task run has the wrong flow run: {str(data)[:100]}"
    return None


@json_check()
def check_accepted_running(data: Any, fixtures: Fixtures) -> str | None:
    if not isinstance(data, dict) or data.get("status") != "ACCEPT":
        return f"state change not accepted: {str(data)[:100]}"
    if (data.get("state") or {}).get("type") != "RUNNING":
        return f"state is not RUNNING: {str(data.get('state'))[:100]}"
    return None


@json_check()
def check_list(data: Any, fixtures: Fixtures) -> str | None:
    return None if isinstance(data, list) else f"expected a list, got {str(data)[:100]}"


def create_fixtures(client: httpx.Client) -> dict[str, str]:
    fixtures = create_flow_run(client, "bench-lifecycle", RUNNING)
    # a name of its own: on a server given with --url, an earlier run's pool may still exist
    work_pool = f"bench-pool-{uuid.uuid4().hex[:8]}"
    created_id(client.post("/work_pools/", json={"name": work_pool, "type": "process"}), "pool")
    return {**fixtures, "work_pool": work_pool}


LIFECYCLE = Workload(
    name="lifecycle",
    description="a running flow's writes: task runs, forced state changes, logs, worker polls",
    setup=create_fixtures,
    endpoints=(
        Endpoint(
            "create task_run",
            "POST",
            "/task_runs/",
            body={
                "flow_run_id": "{flow_run_id}",
                "task_key": "bench-task",
                "dynamic_key": "{unique}",
                "name": "task-{unique}",
                "state": PENDING,
            },
            expect_status=(201,),
            check=check_created_task_run,
        ),
        Endpoint(
            "set flow_run state",
            "POST",
            "/flow_runs/{flow_run_id}/set_state",
            body={"state": RUNNING, "force": True},
            expect_status=(201,),
            check=check_accepted_running,
        ),
        Endpoint(
            f"write {LOGS_PER_BATCH} logs",
            "POST",
            "/logs/",
            body=[
                {
                    "name": "bench",
                    "level": 20,
                    "message": f"bench log {i} of {{unique}}",
                    "timestamp": "2026-01-01T00:00:00Z",
                    "flow_run_id": "{flow_run_id}",
                }
                for i in range(LOGS_PER_BATCH)
            ],
            expect_status=(201,),
        ),
        Endpoint(
            "poll work pool",
            "POST",
            "/work_pools/{work_pool}/get_scheduled_flow_runs",
            body={},
            check=check_list,
        ),
    ),
)
