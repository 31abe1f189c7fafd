"""The reference script's six requests and fixtures, so numbers compare with it."""

from __future__ import annotations

from typing import Any

import httpx

from bench.workloads.base import Endpoint, Fixtures, Workload, created_id, json_check

PENDING = {"type": "PENDING", "name": "Pending"}


def check_health(body: bytes, fixtures: Fixtures) -> str | None:
    return None if body.strip() == b"true" else f"health answered {body[:100]!r}"


def _object_problem(data: Any, expected_id: str, what: str) -> str | None:
    if not isinstance(data, dict) or data.get("id") != expected_id:
        return f"{what}: expected id {expected_id}, got {str(data)[:100]}"
    return None


@json_check("flow")
def check_flow(data: Any, fixtures: Fixtures) -> str | None:
    return _object_problem(data, fixtures["flow_id"], "flow")


@json_check("flow run")
def check_flow_run(data: Any, fixtures: Fixtures) -> str | None:
    return _object_problem(data, fixtures["flow_run_id"], "flow run")


@json_check()
def check_page(data: Any, fixtures: Fixtures) -> str | None:
    """A filter answer: a list of at most 10 objects, each with an id."""
    if not isinstance(data, list) or not 1 <= len(data) <= 10:
        return f"expected a list of 1 to 10 objects, got {str(data)[:100]}"
    if not all(isinstance(item, dict) and "id" in item for item in data):
        return "an object in the list has no id"
    return None


@json_check()
def check_created_flow_run(data: Any, fixtures: Fixtures) -> str | None:
    if not isinstance(data, dict) or data.get("flow_id") != fixtures["flow_id"]:
        return f"created flow run has the wrong flow: {str(data)[:100]}"
    if (data.get("state") or {}).get("type") != "PENDING":
        return f"created flow run is not PENDING: {str(data.get('state'))[:100]}"
    return None


def create_flow_run(client: httpx.Client, name: str, state: dict[str, str]) -> dict[str, str]:
    """Fixtures `flow_id` (the flow "bench-flow") and `flow_run_id` (a run of it in `state`)."""
    flow_id = created_id(client.post("/flows/", json={"name": "bench-flow"}), "flow")
    flow_run_id = created_id(
        client.post("/flow_runs/", json={"flow_id": flow_id, "name": name, "state": state}),
        "flow run",
    )
    return {"flow_id": flow_id, "flow_run_id": flow_run_id}


def create_fixtures(client: httpx.Client) -> dict[str, str]:
    return create_flow_run(client, "bench-run", PENDING)


SEED = Workload(
    name="seed",
    description="the reference script's six requests (health, flows, flow runs)",
    setup=create_fixtures,
    endpoints=(
        Endpoint("health", "GET", "/health", check=check_health),
        Endpoint("GET flow", "GET", "/flows/{flow_id}", check=check_flow),
        Endpoint("filter flows", "POST", "/flows/filter", body={"limit": 10}, check=check_page),
        Endpoint("GET flow_run", "GET", "/flow_runs/{flow_run_id}", check=check_flow_run),
        Endpoint(
            "filter flow_runs", "POST", "/flow_runs/filter", body={"limit": 10}, check=check_page
        ),
        Endpoint(
            "create flow_run",
            "POST",
            "/flow_runs/",
            body={"flow_id": "{flow_id}", "name": "bench-{unique}", "state": PENDING},
            expect_status=(201,),
            check=check_created_flow_run,
        ),
    ),
)

HEALTH = Workload(
    name="health",
    description="GET /health only: for a server that is already running (--url)",
    endpoints=(Endpoint("health", "GET", "/health", check=check_health),),
)
