"""events: task-run events streamed over websockets, and how long each takes to be queryable.

Each virtual user keeps one websocket to `/events/in` open (subprotocol `prefect`, the auth
frame answered `auth_success`, as the client's events worker does) and sends one event per
scenario: the Pending, Running and Completed events of one task run after another, shaped as
flow-runs sends them (`flow_runs.task_run_events`), each confirmed by a ping. So `--rate` is
events/s (open model) and `--concurrency` the number of websockets; without a rate each socket
sends its next event when the last one was confirmed.

A socket the server closes (it closes it when an event does not validate) fails that
scenario's step with the close code, and the next scenario opens a new one.

Lag: the Pending event of a sample of task runs is traced; the probe
(`flow_runs.find_task_run_events`) asks `POST /events/filter` for the events by id and `POST
/task_runs/filter` for their task runs: an event's lag ends when both are there (it passed the
broker, the event persister wrote it, and the task-run recorder made its task run).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from time import monotonic_ns
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from bench.config.run import RunConfig
from bench.engine.scenario import Scenario, VirtualUser
from bench.workloads.base import ScenarioWorkload, post_json
from bench.workloads.flow_runs import (
    LAG,
    TASK_NAME,
    ClientShape,
    authenticate,
    client_shape,
    find_task_run_events,
    task_run_events,
)
from bench.workloads.reported import ScenarioReport

# The related resource that marks one measurement's events, to count them apart.
MEASUREMENT_ROLE = "prefect-bench-measurement"


def _measurement_resource(tag: str) -> str:
    return f"prefect-bench.measurement.{tag}"


async def _events_socket(user: VirtualUser, client: ClientShape) -> ClientConnection:
    """The user's open websocket to /events/in, opened (and authenticated, as `client` does)
    when it has none."""
    kept: ClientConnection | None = user.state.get("ws")
    if kept is not None and kept.state is State.OPEN:
        return kept
    user.state.pop("ws", None)
    ws = await user.open_websocket("open events socket", "/events/in", ("prefect",))
    if client.events_auth:
        await authenticate(user, "events auth", ws)
    user.state["ws"] = ws
    return ws


async def send_event(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """Send the next event of the user's current task run (a new task run after Completed)."""
    ws = await _events_socket(user, params["client"])
    following = user.state.get("events")
    upcoming = next(following, None) if following is not None else None
    first = upcoming is None
    if first:
        task_run_id = str(uuid.uuid4())
        tag = params["tag"]
        related = [
            {
                "prefect.resource.id": _measurement_resource(tag),
                "prefect.resource.role": MEASUREMENT_ROLE,
            }
        ]
        following = task_run_events(
            task_run_id, f"{TASK_NAME}-{user.unique()}", related, tags=(params["task_tag"],)
        )
        user.state["events"], user.state["task_run_id"] = following, task_run_id
        upcoming = next(following)
    event_id, frame = upcoming
    sent_ns = monotonic_ns()
    await user.ws_exchange("send event", ws, [frame])
    user.count("events")
    if first:
        user.count("task_runs")
        user.trace(event_id, user.state["task_run_id"], sent_ns)


def scenario(config: RunConfig, tag: str) -> Scenario:
    """One event per scenario; this measurement's events and task runs carry `tag`."""
    return Scenario(
        "task-run event",
        send_event,
        {"tag": tag, "task_tag": f"prefect-bench-{tag}", "client": client_shape()},
        probe=find_task_run_events,
    )


def recorded(client: httpx.Client, measured: Scenario) -> dict[str, int]:
    """What the server holds of the measurement's events and task runs."""
    measurement = {"related": {"id": [_measurement_resource(measured.params["tag"])]}}
    events = post_json(client, "/events/filter", {"filter": measurement, "limit": 1})
    tags = {"task_runs": {"tags": {"all_": [measured.params["task_tag"]]}}}
    return {
        "events": int(events["total"]),
        "task_runs": int(post_json(client, "/task_runs/count", tags)),
    }


EVENTS = ScenarioWorkload(
    name="events",
    description="task-run events over --concurrency websockets (--rate events/s), with lag",
    scenario=scenario,
    recorded=recorded,
    # one scenario is one event
    report=ScenarioReport(unit="events/s", tables=(LAG,)),
)
