"""workers: W Prefect workers polling a work pool that D scheduled deployments feed.

What one process worker of the real client (prefect 3.9.1, `prefect worker start --pool P
--type process`) sends, captured here through bench.conformance.proxy with its intervals shortened:
- starting: `GET /work_pools/{pool}`, `POST /work_pools/{pool}/queues/filter`, the worker
  channel (a websocket to `/work_pools/{pool}/workers/connect`, subprotocol `prefect`: an auth
  frame answered `auth_success`, `worker.hello.v1` answered `worker.ready.v1`), and its events
  socket with a `prefect.worker.started` event;
- every `PREFECT_WORKER_QUERY_SECONDS` (10 s, ±30%):
  `POST /work_pools/{pool}/get_scheduled_flow_runs` for runs scheduled before now +
  `PREFECT_WORKER_PREFETCH_SECONDS` (10 s); every `PREFECT_WORKER_HEARTBEAT_SECONDS` (30 s) a
  `worker.heartbeat.v1` frame on the channel (the real worker falls back to REST heartbeats
  where the server has no channel; the emulation does not);
- for each run it got: `GET /deployments/{id}`, its claim (`set_state` Pending; another
  worker's claim makes the server answer ABORT), `GET /deployments/{id}` and `GET /flows/{id}`
  for the job's configuration, `PATCH /flow_runs/{id}/labels`, a
  `prefect.worker.submitted-flow-run` event, `set_state` Submitting, and
  `PATCH /flow_runs/{id}` with the process id;
- the flow run's own process: `GET /flow_runs/{id}`, `GET /deployments/{id}`, `GET
  /work_queues/{id}` (its events name the run's work queue as a related resource), then what the
  flow-runs workload sends from the Running state on (which the server answers WAIT until the
  run's scheduled start, as it does for a run claimed ahead of time).

The emulation: each virtual user is one worker (its chain is one poll, with the claims that
follow it; `Scenario.interval_s` paces it), and each claimed run goes on in a user of its own,
as in its own process. The deployments run every `SCHEDULE_S` / --speedup seconds, so that the
server's scheduler makes the runs; the workers' intervals are divided by --speedup too. The
server's own services keep their intervals. Left out (LEFT_OUT; a test compares the emulation
with the real worker through the proxy): the flow run process's pull step (one event, one log
batch), the cancellation observers' `/events/out` subscriptions, the worker's
`executed-flow-run` event when the process exits and its `stopped` event when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any

import httpx
import websockets
from pydantic import Field

from bench.config.run import RunConfig, setting
from bench.core.errors import VerificationError
from bench.engine.scenario import Scenario, StepFailed, VirtualUser
from bench.results import ScenarioResult
from bench.workloads import flow_runs
from bench.workloads.base import ScenarioWorkload, created_id, post_json
from bench.workloads.client_retries import client_retries
from bench.workloads.reported import CountsTable, PartsTable, Reading, ScenarioReport, by_name

WORKER_TYPE = "process"
# Prefect's defaults: PREFECT_WORKER_QUERY_SECONDS, _PREFETCH_SECONDS, _HEARTBEAT_SECONDS;
# and the deployments' schedule, every minute.
POLL_S = 10.0
PREFETCH_S = 10.0
HEARTBEAT_S = 30.0
SCHEDULE_S = 60.0
CHANNEL_VERSION = "work_pool_worker_channel.v1"
CAPABILITIES = ["worker_heartbeat.v1", "work_pool_snapshot.v1"]
# How long a new deployment may wait for the server's scheduler to make its runs: its
# recent-deployments loop runs every 5 s, its main loop every 60 s.
SCHEDULER_WAIT_S = 90.0
# How long a heartbeat waits for a message on the channel before it is sent (recv is
# cancellation-safe: an unread message stays queued).
CHANNEL_READ_S = 0.001
# A run due this long, and a poll interval, before the end of a measurement was missed if it
# is still Scheduled: the time a claim takes.
CLAIM_S = 1.0
# What the real worker sends that the emulation does not, as the counting proxy names it
# (requests by method and path template, websocket paths, message kinds): see the docstring.
LEFT_OUT = {
    "requests": {"GET /events/out"},
    "websockets": {"/events/out"},
    "messages": {
        "filter",
        "prefect.flow-run.pull-step.executed",
        "prefect.worker.executed-flow-run",
        "prefect.worker.stopped",
    },
}
CLAIMED = "scheduled → claimed"
RUNNING = "scheduled → running"


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def _parse(text: Any) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _micros_since(moment: dt.datetime) -> int:
    return int((dt.datetime.now(dt.UTC) - moment).total_seconds() * 1e6)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _frame(kind: str, payload: dict[str, Any]) -> str:
    sent_at = _iso(dt.datetime.now(dt.UTC))
    return json.dumps(
        {"type": kind, "id": str(uuid.uuid4()), "sent_at": sent_at, "payload": payload}
    )


def _worker_event(
    name: str, event: str, params: Mapping[str, Any], related: list[dict[str, str]]
) -> str:
    pool = {
        "prefect.resource.id": f"prefect.work-pool.{params['pool_id']}",
        "prefect.resource.role": "work-pool",
        "prefect.resource.name": params["pool"],
    }
    body = {
        "occurred": flow_runs.zulu(dt.datetime.now(dt.UTC)),
        "event": event,
        "resource": {
            "prefect.resource.id": f"prefect.worker.{WORKER_TYPE}.{name}",
            "prefect.resource.name": name,
            "prefect.version": params["client"].version,
            "prefect.worker-type": WORKER_TYPE,
        },
        "related": [*related, pool],
        "payload": {},
        "id": str(uuid.uuid4()),
        "follows": None,
    }
    return json.dumps(body, separators=(",", ":"))


async def _start(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """The worker's start: its pool, its queues, its channel (then heartbeats beside it) and
    its events socket."""
    pool = params["pool"]
    state = user.state
    for left in (state.get("channel"), state.get("events")):  # of a start that failed
        if left is not None:
            await left.close()
    state["name"] = f"bench-worker-{user.unique()}"
    state["consumer"] = str(uuid.uuid4())
    state["heartbeat_every_s"] = params["heartbeat_s"]  # until the server's ready frame says
    await user.http("read work_pool", "GET", f"/work_pools/{pool}")
    await user.http_json("read work_queues", "POST", f"/work_pools/{pool}/queues/filter", {})
    # a channel that fails is counted at its step; the heartbeat loop opens it again, and
    # the polls go on meanwhile, as the real worker's loops do
    with contextlib.suppress(StepFailed):
        await _open_channel(user, params, state)
    await user.http("GET admin/version", "GET", "/admin/version")
    events = await user.open_websocket("open events socket", "/events/in", ("prefect",))
    await flow_runs.authenticate(user, "events auth", events)
    state["events"] = events
    started = _worker_event(state["name"], "prefect.worker.started", params, [])
    await user.ws_exchange("worker event", events, [started])
    user.spawn(_heartbeats, params, state, loop=True)
    state["started"] = True  # a start that failed is tried again at the next turn


async def _open_channel(
    user: VirtualUser, params: Mapping[str, Any], worker: dict[str, Any]
) -> None:
    """The worker channel, authenticated and ready, kept in `worker` with its heartbeat's
    interval (the server's answer to the worker's)."""
    worker["channel"] = None
    channel = await user.open_websocket(
        "open worker channel", f"/work_pools/{params['pool']}/workers/connect", ("prefect",)
    )
    await flow_runs.authenticate(user, "channel auth", channel)
    hello = _frame(
        "worker.hello.v1",
        {
            "consumer_id": worker["consumer"],
            "worker_name": worker["name"],
            "worker_type": WORKER_TYPE,
            "heartbeat_interval_seconds": params["heartbeat_s"],
            "supported_channel_versions": [CHANNEL_VERSION],
            "requested_capabilities": CAPABILITIES,
            "work_queue_names": [],
            "handled_cleanup_kinds": [],
            "max_cleanup_concurrency": 0,
            "create_pool_if_not_found": False,
            "default_base_job_template": {},
            "worker_metadata": None,
        },
    )
    reply = await user.ws_exchange("worker hello", channel, [hello], answer=True)
    ready = json.loads(reply or "{}")
    if ready.get("type") != "worker.ready.v1":
        raise user.invalid("worker hello", f"expected worker.ready.v1, got {reply!r:.200}")
    worker["heartbeat_every_s"] = ready["payload"]["effective_heartbeat_interval_seconds"]
    worker["channel"] = channel


async def _heartbeats(user: VirtualUser, params: Mapping[str, Any], worker: dict[str, Any]) -> None:
    """The worker's heartbeat loop, beside its polls as in the real worker: a heartbeat every
    interval on the channel; a channel the server closed (SQLite's lock makes it fail to
    persist one: 1011 heartbeat_persistence_failed) is opened again for the next, as the real
    worker reconnects. Each failure is counted at its step."""
    while True:
        await asyncio.sleep(worker["heartbeat_every_s"])
        try:
            if worker["channel"] is None:
                await _open_channel(user, params, worker)
            await _heartbeat(user, worker)
        except StepFailed:
            worker["channel"] = None


async def _heartbeat(user: VirtualUser, worker: dict[str, Any]) -> None:
    """A heartbeat on the channel, after reading what the server sent on it meanwhile (work
    pool snapshots): a socket left unread would stop answering the heartbeat's ping."""
    channel = worker["channel"]
    while True:
        try:
            await asyncio.wait_for(channel.recv(), CHANNEL_READ_S)
        except TimeoutError:
            break
        except websockets.ConnectionClosed as exc:
            raise user.invalid("heartbeat", f"the server closed the channel: {exc}") from None
    frame = _frame(
        "worker.heartbeat.v1",
        {
            "consumer_id": worker["consumer"],
            "worker_name": worker["name"],
            "heartbeat_interval_seconds": worker["heartbeat_every_s"],
        },
    )
    await user.ws_exchange("heartbeat", channel, [frame])


async def poll(user: VirtualUser, params: Mapping[str, Any]) -> None:
    """One turn of a worker's polling loop: one poll, and beside it, as the real worker's task
    group submits them, a claim of each run it returned that it is not already claiming."""
    state = user.state
    if not state.get("started"):
        await _start(user, params)
        state["claiming"] = set()
    before = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=params["prefetch_s"])
    answer = await user.http_json(
        "poll",
        "POST",
        f"/work_pools/{params['pool']}/get_scheduled_flow_runs",
        {"scheduled_before": _iso(before), "work_queue_names": []},
    )
    if not isinstance(answer, list):
        raise user.invalid("poll", f"expected a list: {str(answer)[:200]}")
    runs = []
    for entry in answer:
        run = entry.get("flow_run") if isinstance(entry, dict) else None
        if not isinstance(run, dict) or run.get("deployment_id") not in params["deployments"]:
            raise user.invalid("poll", f"a run of another pool or none: {str(entry)[:200]}")
        scheduled = _parse(run.get("next_scheduled_start_time") or run.get("expected_start_time"))
        if scheduled is None:
            raise user.invalid("poll", f"a run without its scheduled start: {str(run)[:200]}")
        runs.append((run, scheduled))
    for run, scheduled in runs:
        if run["id"] not in state["claiming"]:
            state["claiming"].add(run["id"])
            user.spawn(_claim, run, scheduled, params, state)


async def _claim(
    user: VirtualUser,
    run: dict[str, Any],
    scheduled: dt.datetime,
    params: Mapping[str, Any],
    worker: dict[str, Any],
) -> None:
    """The worker's claim of one run (on a connection of its own, as its client has several),
    then the run started in a process of its own."""
    run_id, deployment_id, flow_id = run["id"], run["deployment_id"], run["flow_id"]
    try:
        await user.http("read deployment", "GET", f"/deployments/{deployment_id}")
        answer = await flow_runs.propose_state(user, "claim", run_id, "PENDING", "Pending")
    finally:  # claimed (by this worker or another), or to be polled again
        worker["claiming"].discard(run_id)
    if answer["status"] != "ACCEPT":  # another worker claimed it first
        user.count("claims_lost")
        return
    claimed = _micros_since(scheduled)
    user.observe(CLAIMED, claimed)
    user.count("claimed")
    user.count("claimed_early", int(claimed < 0))
    user.count("claimed_late", int((run.get("state") or {}).get("name") == "Late"))
    await user.http("read deployment", "GET", f"/deployments/{deployment_id}")
    await user.http("read flow", "GET", f"/flows/{flow_id}")
    labels = {
        "prefect.worker.name": worker["name"],
        "prefect.worker.type": WORKER_TYPE,
        "prefect.work-pool.name": params["pool"],
        "prefect.work-pool.id": params["pool_id"],
    }
    await user.http(
        "label flow_run", "PATCH", f"/flow_runs/{run_id}/labels", _json(labels), expect=(204,)
    )
    related = [
        {
            "prefect.resource.id": f"prefect.flow-run.{run_id}",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": run["name"],
        },
        {
            "prefect.resource.id": f"prefect.deployment.{deployment_id}",
            "prefect.resource.role": "deployment",
            "prefect.resource.name": params["deployments"][deployment_id],
        },
        {
            "prefect.resource.id": f"prefect.flow.{flow_id}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": params["flow_name"],
        },
    ]
    submitted = _worker_event(worker["name"], "prefect.worker.submitted-flow-run", params, related)
    await user.ws_exchange("worker event", worker["events"], [submitted])
    await flow_runs.propose_state(user, "set_state Submitting", run_id, "PENDING", "Submitting")
    pid = {"infrastructure_pid": f"127.0.0.1:{uuid.uuid4().int % 2**22}"}
    await user.http("update flow_run", "PATCH", f"/flow_runs/{run_id}", _json(pid), (204,))
    user.spawn(_flow_run_process, params, run, scheduled)


async def _flow_run_process(
    user: VirtualUser, params: Mapping[str, Any], run: dict[str, Any], scheduled: dt.datetime
) -> None:
    """The claimed run's own process: it reads itself, then runs as the flow-runs workload's.

    A run that has run before is run again, as the real worker would: a worker whose claim
    was held up (a 503 sent again seconds later) proposes Pending for a run another worker
    meanwhile completed, and the server accepts it, since a completed run whose result is not
    persisted may be run again (HandleFlowTerminalStateTransitions). It is counted apart
    (`reruns`, `reruns_completed`): it completes a run the server already counted."""
    run_id = run["id"]
    read = await user.http_json("read flow_run", "GET", f"/flow_runs/{run_id}")
    rerun = isinstance(read, dict) and (read.get("run_count") or 0) >= 1
    user.count("reruns", int(rerun))
    await user.http("read deployment", "GET", f"/deployments/{run['deployment_id']}")
    if queue_id := run.get("work_queue_id"):
        # the engine names the run's work queue among its events' related resources
        # (prefect.events.related), read once per run
        await user.http("read work_queue", "GET", f"/work_queues/{queue_id}")
    await flow_runs.start_run(user, run_id)
    user.observe(RUNNING, _micros_since(scheduled))
    await flow_runs.run_tasks(
        user,
        params["client"],
        run["flow_id"],
        params["flow_name"],
        run_id,
        run["name"],
        params["tasks"],
        counted="reruns_completed" if rerun else "flow_runs",
    )


class WorkerOptions(flow_runs.FlowRunOptions):
    """The workers workload's settings: its deployments and how much faster than a real
    worker it runs (and the flow runs' --tasks)."""

    deployments: Annotated[int, Field(ge=1)] = setting(
        "--deployments",
        "D",
        measurement=True,
        default=10,
        description="workers: deployments feeding the work pool, each on a schedule of every "
        "60 s / --speedup",
    )
    speedup: Annotated[float, Field(gt=0, allow_inf_nan=False)] = setting(
        "--speedup",
        "K",
        measurement=True,
        default=10.0,
        description="workers: the real worker's intervals (poll 10 s, prefetch 10 s, heartbeat "
        "30 s) and the deployments' schedule divided by this, so a short window sees many polls",
    )


def refuse(config: RunConfig) -> str | None:
    """Workers need the server's scheduler and poll at their own pace."""
    if config.no_services:
        return "--workload workers needs the server's scheduler, which --no-services turns off"
    if config.rate is not None:
        return "--rate: workers poll at their own pace (see --speedup)"
    return None


def scenario(config: RunConfig, tag: str) -> Scenario:
    """The workers scenario of one measurement; `prepare` makes its pool and deployments."""
    options = WorkerOptions.of(config)
    speedup = options.speedup
    return Scenario(
        f"worker poll, {options.deployments} deployments",
        poll,
        {
            "tag": tag,
            "pool": f"bench-pool-{tag}",
            "tasks": options.tasks,
            "flow_name": f"bench-flow-{tag}",
            "deployment_count": options.deployments,
            "schedule_s": SCHEDULE_S / speedup,
            "prefetch_s": PREFETCH_S / speedup,
            "heartbeat_s": max(1, round(HEARTBEAT_S / speedup)),
            "client": flow_runs.client_shape(),
        },
        interval_s=POLL_S / speedup,
        retry=client_retries(),
    )


def _runs_of(params: Mapping[str, Any], **flow_runs_filter: Any) -> dict[str, Any]:
    return {"deployments": {"id": {"any_": list(params["deployments"])}}} | (
        {"flow_runs": flow_runs_filter} if flow_runs_filter else {}
    )


def prepare(client: httpx.Client, measured: Scenario, verify: bool) -> Scenario:
    """Make the scenario's work pool, flow and deployments. Measuring: each deployment on its
    schedule, once the server's scheduler has made runs for all of them. Verifying: no
    schedules, one run made now through `create_flow_run`, as `run_deployment` does."""
    params = dict(measured.params)
    answer = client.post("/work_pools/", json={"name": params["pool"], "type": WORKER_TYPE})
    if answer.status_code == 404:
        raise VerificationError(
            "the workers workload needs work pools: POST /work_pools/ answered 404"
        )
    params["pool_id"] = created_id(answer, "work pool")
    flow_id = created_id(client.post("/flows/", json={"name": params["flow_name"]}), "flow")
    now = dt.datetime.now(dt.UTC)
    count = 1 if verify else params["deployment_count"]
    deployments: dict[str, str] = {}
    for i in range(count):
        name = f"bench-deployment-{i}"
        # anchors spread over one interval: runs come evenly, D per interval, not in bursts
        anchor = now + dt.timedelta(seconds=params["schedule_s"] * i / count)
        schedule = {"interval": params["schedule_s"], "anchor_date": _iso(anchor)}
        body = {
            "name": name,
            "flow_id": flow_id,
            "work_pool_name": params["pool"],
            "entrypoint": "bench_flow.py:bench_flow",
            "schedules": [] if verify else [{"schedule": schedule, "active": True}],
        }
        deployments[created_id(client.post("/deployments/", json=body), "deployment")] = name
    params["deployments"] = deployments
    if verify:
        (deployment_id,) = deployments
        created_id(client.post(f"/deployments/{deployment_id}/create_flow_run", json={}), "run")
    else:
        _await_scheduler(client, params)
    return replace(measured, params=params)


def _await_scheduler(client: httpx.Client, params: Mapping[str, Any]) -> None:
    """Wait until the server's scheduler has made runs for every deployment."""
    deadline = time.monotonic() + SCHEDULER_WAIT_S
    want = len(params["deployments"])
    while True:
        made = int(post_json(client, "/flow_runs/count", _runs_of(params)))
        if made >= want:
            return
        if time.monotonic() > deadline:
            raise VerificationError(
                f"the server's scheduler made {made} runs for {want} scheduled deployments "
                f"within {SCHEDULER_WAIT_S:g} s: is its scheduler service running?"
            )
        time.sleep(0.2)


def finish(client: httpx.Client, measured: Scenario, ended: dt.datetime) -> dict[str, int]:
    """What the server's services did for the measurement that `ended` (wall clock): `due`,
    runs scheduled to start before it ended; `unclaimed`, of those due more than a poll
    interval and a second before it ended (time for a poll and a claim), the runs still
    Scheduled; `late`, runs its late-runs service marked Late. Then each deployment is paused,
    which deletes its runs still to come."""
    params = measured.params
    missed = ended - dt.timedelta(seconds=(measured.interval_s or 0) + CLAIM_S)

    def count(**flow_runs_filter: Any) -> int:
        return int(post_json(client, "/flow_runs/count", _runs_of(params, **flow_runs_filter)))

    found = {
        "due": count(expected_start_time={"before_": _iso(ended)}),
        "unclaimed": count(
            expected_start_time={"before_": _iso(missed)},
            state={"type": {"any_": ["SCHEDULED"]}},
        ),
        "late": count(state={"name": {"any_": ["Late"]}}),
    }
    for deployment_id in params["deployments"]:
        answer = client.post(f"/deployments/{deployment_id}/pause_deployment")
        if answer.status_code not in (200, 204):
            raise VerificationError(
                f"pausing deployment {deployment_id} answered {answer.status_code}"
            )
    return found


def recorded(client: httpx.Client, measured: Scenario) -> dict[str, int]:
    """What the server holds of the scenario's runs: completed flow runs, task runs."""
    params = measured.params
    completed = {"state": {"type": {"any_": ["COMPLETED"]}}}
    ids = {"deployment_id": {"any_": list(params["deployments"])}}
    return {
        "flow_runs": int(post_json(client, "/flow_runs/count", _runs_of(params, **completed))),
        "task_runs": int(post_json(client, "/task_runs/count", {"flow_runs": ids})),
    }


def delays(measured: ScenarioResult) -> dict[str, Reading | None]:
    """The delays the scenario observed (CLAIMED, RUNNING) by name, each its p50 / p99."""
    return by_name(
        measured.timings, lambda t: None if t.latency_ms is None else Reading(latency=t.latency_ms)
    )


DELAYS = PartsTable(
    "delays p50 / p99 (ms)",
    "delay",
    delays,
    note="Delays: scheduled → claimed: from a flow run's scheduled start to the worker's Pending "
    "proposal being accepted (0 when claimed ahead through the prefetch); scheduled → running: "
    "to its Running state being accepted (the server holds early runs until their time).",
)
# what `finish` read back
SERVER_SIDE = CountsTable(
    "What the server's services did",
    lambda measured: measured.server_side,
    note="What the server's services did: due: runs of the level's deployments scheduled to "
    "start before it ended; unclaimed: of those due more than a poll interval and a second "
    "before the end, those still Scheduled at the end; late: those the server's late-runs "
    "service marked Late.",
)

WORKERS = ScenarioWorkload(
    name="workers",
    description="--concurrency Prefect workers polling a work pool that --deployments "
    "scheduled deployments feed; each claimed run runs as flow-runs runs one",
    scenario=scenario,
    recorded=recorded,
    prepare=prepare,
    finish=finish,
    report=ScenarioReport(tables=(flow_runs.BACKEND_PER_FLOW_RUN, DELAYS, SERVER_SIDE)),
    options=WorkerOptions,
    default_concurrency=(10,),
    refuse=refuse,
)
