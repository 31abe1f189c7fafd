"""flow-runs: flow runs of N tasks, sent as the real Prefect 3 client sends them.

What one flow run of the real client (prefect 3.9.1, a flow calling N tasks, run as its own
process) sends, captured here from its HTTP client and its websocket, in this order (older
clients send less: ClientShape):
- its sync client: `GET /admin/version`, `GET /csrf-token?client=…`, `POST /flows/`,
  `POST /flow_runs/` (PENDING), `POST /flow_runs/{id}/set_state` (RUNNING),
  `GET /flow_runs/{id}`, 2 × `GET /admin/storage`, `POST /flow_runs/{id}/set_state` (COMPLETED);
- its events and logs workers: `GET /admin/version`, a websocket to `/events/in` (subprotocol
  `prefect`, an auth frame answered `auth_success`), `GET /flows/{id}` (the flow's name, for
  the events' related resources), one heartbeat event and 3 events per task (Pending, Running,
  Completed), `GET /csrf-token?client=…`, and one `POST /logs/` batch (N + 2 records).
No HTTP request per task: the server's task-run recorder turns the task events into task runs.

The emulation sends the same requests and frames with bodies of the same shape, in one chain
per virtual user; the task events go between RUNNING and COMPLETED, where the tasks run, and
are confirmed with a ping (the real client pings every 700 events). The first task's Pending
event of sampled flow runs is followed until it is queryable (`find_task_run_events`, the lag
probe the events workload uses too). docs/design-notes.md says what it leaves out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from time import monotonic_ns
from typing import Annotated, Any, Protocol

import httpx
from pydantic import Field
from websockets.asyncio.client import ClientConnection

from bench.config.run import Options, RunConfig, setting
from bench.config.versions import version_key
from bench.engine.scenario import Scenario, VirtualUser
from bench.results import ScenarioResult
from bench.workloads.base import ScenarioWorkload, post_json
from bench.workloads.client_retries import client_retries
from bench.workloads.reported import LevelTable, Reading, ScenarioReport

PREFECT_VERSION = "3.9.1"  # the client emulated where no Prefect is installed
TASK_NAME = "bench-task"
AUTH_FRAME = json.dumps({"type": "auth", "token": None})
TASK_STATES = (("PENDING", "Pending"), ("RUNNING", "Running"), ("COMPLETED", "Completed"))


@dataclass(frozen=True)
class ClientShape:
    """What one flow run sends that differs between Prefect clients. The emulation is the
    client of the Prefect installed beside prefect-bench: in a run comparing versions, its
    server's (docs/design-notes.md, "Prefect versions as a dimension")."""

    version: str
    # the auth frame (answered auth_success) opening the events socket
    events_auth: bool
    # one prefect.flow-run.heartbeat event, and the events worker's GET /admin/version
    heartbeat: bool
    # 2 × GET /admin/storage once the run is running
    storage_reads: bool


# The first version whose client sends each, found through bench.conformance.proxy
# (`bench conformance` with releases from 3.4.25 to 3.9.1 installed as of their day, the 3.6
# line bisected).
CLIENT_CHANGES = {"events_auth": "3.6.14", "heartbeat": "3.6.22", "storage_reads": "3.7.0"}


def client_shape(version: str | None = None) -> ClientShape:
    """The shape of `version`'s client (default: the installed Prefect's, else 3.9.1's)."""
    if version is None:
        try:
            version = importlib.metadata.version("prefect")
        except importlib.metadata.PackageNotFoundError:
            version = PREFECT_VERSION
    given = version_key(version)
    return ClientShape(
        version, **{change: given >= version_key(since) for change, since in CLIENT_CHANGES.items()}
    )


async def authenticate(user: VirtualUser, step: str, ws: ClientConnection) -> None:
    """The Prefect socket's handshake: the auth frame, answered `auth_success`."""
    reply = await user.ws_exchange(step, ws, [AUTH_FRAME], answer=True)
    if not reply or json.loads(reply).get("type") != "auth_success":
        raise user.invalid(step, f"expected auth_success, got {reply!r:.200}")


class ClientValues(Protocol):
    """What the client chooses itself, from a seeded generator instead of uuid4 and the clock
    (bench.cost.scenarios: a cost cell sends the same bytes in every run)."""

    def new_id(self) -> uuid.UUID: ...

    def now(self) -> dt.datetime: ...


# Set in the context of a cost cell's replay; None: random ids, the clock's time.
CLIENT_VALUES: ContextVar[ClientValues | None] = ContextVar("client_values", default=None)


def _now() -> dt.datetime:
    values = CLIENT_VALUES.get()
    return dt.datetime.now(dt.UTC) if values is None else values.now()


def _new_id() -> str:
    values = CLIENT_VALUES.get()
    return str(uuid.uuid4() if values is None else values.new_id())


def zulu(moment: dt.datetime) -> str:
    """ISO 8601 as the client writes it in events: microseconds and a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _state_details(flow_run_id: str, untrackable: bool) -> dict[str, Any]:
    return {
        "flow_run_id": flow_run_id,
        "task_run_id": None,
        "child_flow_run_id": None,
        "scheduled_time": None,
        "cache_key": None,
        "cache_expiration": None,
        "deferred": None,
        "untrackable_result": untrackable,
        "pause_timeout": None,
        "pause_reschedule": False,
        "pause_key": None,
        "run_input_keyset": None,
        "refresh_cache": None,
        "retriable": None,
        "transition_id": _new_id(),
        "task_parameters_id": None,
        "traceparent": None,
        "deployment_concurrency_lease_id": None,
    }


# How often a state proposal answered WAIT is proposed again (the client waits as told, each
# time: a run claimed ahead of its scheduled start is held until then).
MAX_WAITS = 100


async def propose_state(
    user: VirtualUser, step: str, run_id: str, kind: str, name: str
) -> dict[str, Any]:
    """Propose the state `kind`/`name` for the flow run, as the client's `propose_state` does:
    a WAIT answer is waited out and proposed again. Returns the last answer (ACCEPT, REJECT or
    ABORT)."""
    state = {
        "type": kind,
        "name": name,
        "message": None,
        "state_details": _state_details(run_id, untrackable=kind == "COMPLETED"),
        "data": None,
    }
    body = {"state": state, "force": False}
    for _ in range(MAX_WAITS):
        answer = await user.http_json(
            step, "POST", f"/flow_runs/{run_id}/set_state", body, expect=(200, 201)
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            raise user.invalid(step, f"expected an orchestration result: {str(answer)[:200]}")
        if answer["status"] != "WAIT":
            return answer
        delay = (answer.get("details") or {}).get("delay_seconds")
        await asyncio.sleep(delay if isinstance(delay, int | float) else 0.1)
    raise user.invalid(step, f"the {name} state was still to wait after {MAX_WAITS} waits")


async def _set_state(user: VirtualUser, step: str, run_id: str, kind: str, name: str) -> None:
    answer = await propose_state(user, step, run_id, kind, name)
    if answer["status"] != "ACCEPT":
        raise user.invalid(step, f"the {name} state was not accepted: {str(answer)[:200]}")


def _created(user: VirtualUser, step: str, answer: Any, *keys: str) -> list[str]:
    if not isinstance(answer, dict) or any(not isinstance(answer.get(k), str) for k in keys):
        raise user.invalid(step, f"expected an object with {', '.join(keys)}: {str(answer)[:200]}")
    return [answer[k] for k in keys]


def task_events(
    flow_id: str, flow_name: str, run_id: str, run_name: str, task_index: int
) -> tuple[str, str, list[str]]:
    """The 3 events of one task run of a flow run (Pending, Running, Completed): the Pending
    event's id, the task run's id and the frames."""
    related = [
        {
            "prefect.resource.id": f"prefect.flow-run.{run_id}",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": run_name,
        },
        {
            "prefect.resource.id": f"prefect.flow.{flow_id}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": flow_name,
        },
    ]
    task_run_id = _new_id()
    made = list(task_run_events(task_run_id, f"{TASK_NAME}-{task_index}", related))
    return made[0][0], task_run_id, [frame for _, frame in made]


def task_run_events(
    task_run_id: str, name: str, related: list[dict[str, str]], tags: tuple[str, ...] = ()
) -> Iterator[tuple[str, str]]:
    """The 3 events of one task run (Pending, Running, Completed) as the client emits them
    (prefect.utilities.engine.emit_task_run_state_change_event): (event id, websocket frame),
    each made, and timestamped, when it is asked for."""
    start = _now()
    task_run: dict[str, Any] = {
        "name": name,
        "task_key": f"{TASK_NAME}-5f3a2c1d",
        "dynamic_key": _new_id(),
        "empirical_policy": {
            "max_retries": 0,
            "retry_delay_seconds": 0.0,
            "retries": 0,
            "retry_delay": 0,
        },
        "tags": list(tags),
        "labels": {},
        "task_inputs": {"i": []},
        "run_count": 0,
        "flow_run_run_count": 0,
        "expected_start_time": zulu(start),
        "total_run_time": 0.0,
    }
    previous: dict[str, Any] | None = None
    follows = None
    for kind, state_name in TASK_STATES:
        moment = _now()
        if kind == "RUNNING":
            task_run |= {"run_count": 1, "flow_run_run_count": 1, "start_time": zulu(moment)}
        elif kind == "COMPLETED":
            task_run |= {"end_time": zulu(moment), "total_run_time": 0.001}
        details = {"untrackable_result": True} if kind == "COMPLETED" else {}
        state = {"type": kind, "name": state_name, "message": "", "state_details": details}
        event_id = _new_id()
        event = {
            "occurred": zulu(moment),
            "event": f"prefect.task-run.{state_name}",
            "resource": {
                "prefect.resource.id": f"prefect.task-run.{task_run_id}",
                "prefect.resource.name": name,
                "prefect.run-count": str(task_run["run_count"]),
                "prefect.state-message": "",
                "prefect.state-name": state_name,
                "prefect.state-timestamp": moment.isoformat(),
                "prefect.state-type": kind,
                "prefect.orchestration": "client",
            },
            "related": related,
            "payload": {
                "intended": {"from": previous["type"] if previous else None, "to": kind},
                "initial_state": previous,
                "validated_state": state | {"data": None},
                "task_run": task_run,
            },
            "id": event_id,
            "follows": follows,
        }
        yield event_id, json.dumps(event, separators=(",", ":"))
        previous, follows = state, event_id


def heartbeat(flow_id: str, flow_name: str, run_id: str, run_name: str, version: str) -> str:
    """The flow run's heartbeat event, as the client (of `version`) emits it once per run."""
    event = {
        "occurred": zulu(_now()),
        "event": "prefect.flow-run.heartbeat",
        "resource": {
            "prefect.resource.id": f"prefect.flow-run.{run_id}",
            "prefect.resource.name": run_name,
            "prefect.version": version,
        },
        "related": [
            {
                "prefect.resource.id": f"prefect.flow.{flow_id}",
                "prefect.resource.role": "flow",
                "prefect.resource.name": flow_name,
            }
        ],
        "payload": {},
        "id": _new_id(),
        "follows": None,
    }
    return json.dumps(event, separators=(",", ":"))


async def find_task_run_events(
    user: VirtualUser, pending: Mapping[str, Any], params: Mapping[str, Any]
) -> set[str]:
    """The lag probe of task-run events: which of the pending events (event id -> task run
    id) the server shows, their task runs too."""
    page = await user.http_json(
        "find events",
        "POST",
        "/events/filter",
        {"filter": {"id": {"id": list(pending)}}, "limit": len(pending)},
    )
    if not isinstance(page, dict) or not isinstance(page.get("events"), list):
        raise user.invalid("find events", f"expected an event page: {str(page)[:200]}")
    events = {str(e.get("id")) for e in page["events"]} & set(pending)
    if not events:
        return set()
    runs = await user.http_json(
        "find task runs",
        "POST",
        "/task_runs/filter",
        {"task_runs": {"id": {"any_": [pending[e] for e in events]}}, "limit": len(events)},
    )
    if not isinstance(runs, list):
        raise user.invalid("find task runs", f"expected a list: {str(runs)[:200]}")
    readable = {str(r.get("id")) for r in runs}
    return {e for e in events if pending[e] in readable}


def _logs(run_id: str, run_name: str, flow_name: str, tasks: int) -> list[dict[str, Any]]:
    def record(name: str, message: str, task_run_id: str | None = None) -> dict[str, Any]:
        return {
            "name": name,
            "level": 20,
            "message": message,
            "timestamp": zulu(_now()),
            "flow_run_id": run_id,
            "task_run_id": task_run_id,
        }

    logs = [record("prefect.flow_runs", f"Beginning flow run '{run_name}' for flow '{flow_name}'")]
    logs += [
        record("prefect.task_runs", "Finished in state Completed()", _new_id())
        for _ in range(tasks)
    ]
    logs.append(record("prefect.flow_runs", "Finished in state Completed()"))
    return logs


async def _csrf_token(user: VirtualUser) -> None:
    # 422 "CSRF protection is disabled." (the server's default) and 404 (an older server) are
    # answers the client accepts: it then sends no token (prefect.client.base)
    await user.http(
        "GET csrf-token", "GET", f"/csrf-token?client={_new_id()}", expect=(200, 404, 422)
    )


async def flow_run(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """One flow run with `params["tasks"]` tasks of the flow `params["flow_name"]`."""
    tasks: int = params["tasks"]
    flow_name: str = params["flow_name"]
    await user.http("GET admin/version", "GET", "/admin/version")
    await _csrf_token(user)
    flow = await user.http_json(
        "create flow",
        "POST",
        "/flows/",
        {"name": flow_name, "tags": [], "labels": {}},
        expect=(200, 201),
    )
    (flow_id,) = _created(user, "create flow", flow, "id")
    pending = {
        "type": "PENDING",
        "name": "Pending",
        "message": None,
        "state_details": {"traceparent": None},
        "data": None,
    }
    body = {
        "state": pending,
        "name": None,
        "flow_id": flow_id,
        "flow_version": "5f3a2c1d8e9b4a7f6c0d1e2f3a4b5c6d",
        "parameters": {"n": tasks},
        "context": {},
        "parent_task_run_id": None,
        "empirical_policy": {"retries": 0, "retry_delay": 0},
        "tags": [],
    }
    run = await user.http_json("create flow_run", "POST", "/flow_runs/", body, expect=(201,))
    run_id, run_name = _created(user, "create flow_run", run, "id", "name")
    await start_run(user, run_id)
    await run_tasks(user, params["client"], flow_id, flow_name, run_id, run_name, tasks)


async def start_run(user: VirtualUser, run_id: str) -> None:
    """The engine's start of a flow run: its Running state, accepted."""
    await _set_state(user, "set_state RUNNING", run_id, "RUNNING", "Running")


async def run_tasks(
    user: VirtualUser,
    client: ClientShape,
    flow_id: str,
    flow_name: str,
    run_id: str,
    run_name: str,
    tasks: int,
    counted: str = "flow_runs",
) -> None:
    """What a running flow run of `tasks` tasks sends from `client`, from reading itself back
    to its logs; its completion is counted as `counted`."""
    await user.http("read flow_run", "GET", f"/flow_runs/{run_id}")
    if client.storage_reads:
        for _ in range(2):
            await user.http("GET admin/storage", "GET", "/admin/storage")
    if client.heartbeat:
        await user.http("GET admin/version", "GET", "/admin/version")
    async with user.websocket("open events socket", "/events/in", ("prefect",)) as ws:
        if client.events_auth:
            await authenticate(user, "events auth", ws)
        await user.http("read flow", "GET", f"/flows/{flow_id}")
        frames = []
        if client.heartbeat:
            frames.append(heartbeat(flow_id, flow_name, run_id, run_name, client.version))
        traced: tuple[str, str] | None = None
        for i in range(tasks):
            pending_id, task_run_id, made = task_events(flow_id, flow_name, run_id, run_name, i)
            frames += made
            traced = traced or (pending_id, task_run_id)
        sent_ns = monotonic_ns()
        await user.ws_exchange("task events", ws, frames)
        if traced:  # the first task's lag, from the burst's send
            user.trace(*traced, sent_ns)
        user.count("task_runs", tasks)
        user.count("events", len(frames))
        await _set_state(user, "set_state COMPLETED", run_id, "COMPLETED", "Completed")
        user.count(counted)
        await _csrf_token(user)
        await user.http_json(
            "write logs", "POST", "/logs/", _logs(run_id, run_name, flow_name, tasks), (201,)
        )


def recorded(client: httpx.Client, flow_name: str) -> dict[str, int]:
    """What the server holds of the flow `flow_name`'s runs: completed flow runs, task runs."""
    flows = {"name": {"any_": [flow_name]}}
    completed = {"state": {"type": {"any_": ["COMPLETED"]}}}
    return {
        "flow_runs": int(
            post_json(client, "/flow_runs/count", {"flows": flows, "flow_runs": completed})
        ),
        "task_runs": int(post_json(client, "/task_runs/count", {"flows": flows})),
    }


class FlowRunOptions(Options):
    """The settings of a workload that runs flow runs (flow-runs, workers, mixed)."""

    tasks: Annotated[int, Field(ge=1)] = setting(
        "--tasks",
        "N",
        measurement=True,
        default=10,
        description="flow-runs, workers: tasks per flow run",
    )


def scenario(config: RunConfig, tag: str) -> Scenario:
    """The flow-runs scenario of one measurement: its flow's name is unique (`tag`), so what
    the server recorded of it can be counted apart from every other measurement's."""
    tasks = FlowRunOptions.of(config).tasks
    return Scenario(
        f"flow run, {tasks} tasks",
        flow_run,
        {"tasks": tasks, "flow_name": f"bench-flow-{tag}", "client": client_shape()},
        probe=find_task_run_events,
        retry=client_retries(),
    )


def recorded_of(client: httpx.Client, measured: Scenario) -> dict[str, int]:
    return recorded(client, measured.params["flow_name"])


def lag(measured: ScenarioResult) -> Reading | None:
    """The lag `find_task_run_events` measured, with its probes and the unresolved ones (None
    for a scenario without the probe)."""
    probes, unresolved = measured.lag_probes, measured.lag_unresolved
    if measured.lag_ms is None and probes is None and unresolved is None:
        return None
    remarks = [] if probes is None else [f"{probes} probe{'' if probes == 1 else 's'}"]
    remarks += [f"{unresolved} unresolved"] if unresolved else []
    return Reading(latency=measured.lag_ms, remarks=tuple(remarks), bad=bool(unresolved))


# The lag table of the scenarios that sample it with `find_task_run_events` (events too).
LAG = LevelTable(
    "Event lag p50 / p99 (ms), sent to queryable",
    lag,
    note="Event lag: of a sample of the events sent, the time from sending one until the server "
    "returned it from POST /events/filter and its task run from POST /task_runs/filter (the "
    "broker, the event persister and the task-run recorder all passed it); probes: the sampled "
    "events found in the window.",
    bad_note="unresolved: sampled events not found when the window ended though they had waited "
    "longer than the longest lag found: their lag is longer still, or they were lost. The p50 / "
    "p99 leave them out: where there are unresolved events they are lower bounds.",
)
# The backends' figures per flow run shown, and how: of those the runner gives every scenario
# that counts `flow_runs` (workers' too, bench.observe.telemetry.per_item).
BACKEND_SHOWN = {"postgres_xact_per_item": "pg xact", "redis_commands_per_item": "redis cmd"}


def backend_work(measured: ScenarioResult) -> Reading | None:
    """Database transactions and Redis commands per completed flow run, where measured."""
    figures = measured.backend_per_flow_run
    if not figures:
        return None
    shown = [
        (value, unit) for k, unit in BACKEND_SHOWN.items() if (value := figures.get(k)) is not None
    ]
    return Reading(amounts=tuple(shown))


BACKEND_PER_FLOW_RUN = LevelTable(
    "Backend work per flow run",
    backend_work,
    note="Backend work per flow run: PostgreSQL transactions (pg_stat_database, up to ~1 s late "
    "per busy connection) and Redis commands (INFO commandstats) over the measurement and the "
    "wait for the server to record it, divided by the flow runs completed; the server's "
    "background work is included.",
)

FLOW_RUNS = ScenarioWorkload(
    name="flow-runs",
    description="flow runs of --tasks tasks, as the real Prefect client sends them",
    scenario=scenario,
    recorded=recorded_of,
    real_client_check=lambda config: FlowRunOptions.of(config).tasks,
    report=ScenarioReport(tables=(LAG, BACKEND_PER_FLOW_RUN)),
    options=FlowRunOptions,
)
