"""Does a server serve the real Prefect client? Run a flow with it and read everything back.

`check(base_url, tasks=N, workdir=…, timeout_s=…)` runs `flow.py` (one flow run
with N tasks) with the real `prefect` package of this interpreter in a child process, pointed
at a counting proxy in front of the server. Then it reads back through the server's API, each
check polled until one shared deadline: the flow run is COMPLETED, its N task runs are recorded
and COMPLETED (the server's task-run recorder writes them from events, asynchronously), and the
events of the flow run and of each task run are queryable. The report says which checks failed
and why, and what the client sent (`TrafficCounts`, counted by `counting_proxy`). Last, the
flow-runs workload's emulation of the same client runs the same flow once through a proxy of
its own: it must send the same requests, websockets, text frames and messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field

from bench.config.run import RunConfig
from bench.conformance.flow import RESULT_PREFIX
from bench.conformance.proxy import TrafficCounts, counting_proxy
from bench.core.errors import ConfigError, ServerError
from bench.core.failures import cause_in, one_line
from bench.core.process import ManagedProcess, wait_until
from bench.engine import Target
from bench.engine.scenario import StepFailed, run_once
from bench.servers.adapter import clean_environ
from bench.workloads import flow_runs
from bench.workloads.base import api_client

DEFAULT_TASKS = 10
DEFAULT_TIMEOUT_S = 30.0
# The client's own bound: importing prefect takes ~3 s here and a task ~10 ms, a loaded machine
# many times that; a read-back timeout is no bound for it (a short one would kill the client).
CLIENT_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_PER_TASK_S = 0.1
FLOW_SCRIPT = Path(__file__).with_name("flow.py")
CLIENT_LOG = "client.log"  # the client's output, in the check's folder
# What must read back besides the task runs: the event the server emits when the flow run
# completes, and the three events each task run's engine emits (task_engine.py), from which
# the task-run recorder writes the task run.
FLOW_RUN_EVENT = "prefect.flow-run.Completed"
TASK_RUN_EVENTS = (
    "prefect.task-run.Pending",
    "prefect.task-run.Running",
    "prefect.task-run.Completed",
)
POLL_INTERVAL_S = 0.25
# /events/filter answers at most 50 events (INTERACTIVE_PAGE_SIZE); asking for 25 task runs'
# events at a time leaves room for an event the client sent again after a reconnect.
_EVENTS_LIMIT = 50
_EVENTS_CHUNK = 25
_TASK_RUNS_LIMIT = 200
# Variables that would send the child's requests through someone's proxy instead of ours
# (httpx and websockets both honour them); compared in lower case.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")
# The client's last lines of output kept when it fails (a Prefect traceback is ~40 lines).
_LOG_LINES = 60
# What the client says in its own words (its exception, its flow run's state message).
_SAID = ("log_tail", "message")
# The one answer >= 400 the real client gets from a conforming server too: CSRF protection is
# off there, and GET /csrf-token answers 422 (the client goes on).
_CSRF_OFF = "/csrf-token 422"
_LOGS = "POST /api/logs/"  # a flow run's last request


# -- the real client -------------------------------------------------------------------------


class ClientRun(BaseModel):
    """How the real client's run of the flow went, as it said itself."""

    exit_code: int | None = Field(description="None: stopped when it did not finish in time")
    duration_s: float
    client_version: str | None = None
    flow_run_id: str | None = None
    state: str | None = None
    message: str | None = None
    task_run_ids: list[str] = Field(default_factory=list)
    log_tail: str = ""


def client_environ(api_url: str, prefect_home: Path) -> dict[str, str]:
    """Our environment for the client: no PREFECT_* setting of ours (a profile, an API key)
    and no HTTP proxy, its own PREFECT_HOME and profiles, and PREFECT_API_URL = `api_url`."""
    env = {k: v for k, v in clean_environ().items() if k.lower() not in _PROXY_VARIABLES}
    return env | {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_PROFILES_PATH": str(prefect_home / "profiles.toml"),
    }


def run_client(api_url: str, *, tasks: int, workdir: Path, timeout_s: float) -> ClientRun:
    """Run the flow with the real client in a child process of this interpreter, in `workdir`
    (so that no prefect.toml, pyproject.toml or .env of ours is read); its output goes to
    `workdir/client.log`. Stopped, its whole process tree, after `timeout_s` or on Ctrl-C."""
    home = workdir / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    log_path = workdir / CLIENT_LOG
    argv = [sys.executable, str(FLOW_SCRIPT), "--tasks", str(tasks)]
    started = time.monotonic()
    process = ManagedProcess(
        argv, env=client_environ(api_url, home), cwd=workdir, log_path=log_path
    )
    try:
        wait_until(lambda: process.exit_code() is not None, timeout_s=timeout_s, interval_s=0.1)
        exit_code = process.exit_code()
    except TimeoutError:
        exit_code = None
    finally:
        process.stop()
    run = ClientRun(
        exit_code=exit_code,
        duration_s=time.monotonic() - started,
        log_tail=process.log_tail(_LOG_LINES),
    )
    said = [line for line in _lines(log_path) if line.startswith(RESULT_PREFIX)]
    if said:
        with contextlib.suppress(ValueError, TypeError):
            run = run.model_copy(update=json.loads(said[-1][len(RESULT_PREFIX) :]))
    return run


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


# -- reading back ----------------------------------------------------------------------------


class CheckResult(BaseModel):
    """One thing that must be true of the server, and whether it was."""

    name: str
    ok: bool
    detail: str = Field(description="one line: what was found, or the cause of the failure")
    after_s: float | None = Field(
        default=None, description="seconds from the client's exit until it read back"
    )
    details: str = Field(
        default="",
        description="what explains a failure at length (the client's last lines of output): "
        "what -v shows",
    )


class ConformanceReport(BaseModel):
    """What `check` found: each check, the ids the client made, and what it sent."""

    url: str
    tasks: int
    timeout_s: float
    client_version: str | None
    flow_run_id: str | None
    task_run_ids: list[str]
    checks: list[CheckResult]
    traffic: TrafficCounts

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]


def client_timeout_s(tasks: int) -> float:
    """How long the real client may take to run a flow of `tasks` tasks."""
    return CLIENT_TIMEOUT_S + tasks * CLIENT_TIMEOUT_PER_TASK_S


def check_inputs(tasks: int, timeout_s: float) -> None:
    """ConfigError unless there is at least one task and a positive, finite timeout."""
    if tasks < 1:
        raise ConfigError(f"--tasks: the flow needs at least 1 task, got {tasks}")
    if not 0 < timeout_s < float("inf"):
        raise ConfigError(f"--timeout: seconds must be more than 0, got {timeout_s:g}")


def check(
    base_url: str,
    *,
    tasks: int = DEFAULT_TASKS,
    workdir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ConformanceReport:
    """Run the real client's flow against the server at `base_url` and read it all back.

    `workdir` holds the client's PREFECT_HOME and log (the caller removes it). The client has
    `client_timeout_s(tasks)` to finish; then every check shares one deadline, `timeout_s`
    later. ConfigError for bad input, ServerError when the server does not answer /health.
    """
    check_inputs(tasks, timeout_s)
    workdir.mkdir(parents=True, exist_ok=True)
    with api_client(base_url) as api:
        _require_health(api, base_url)
        with counting_proxy(base_url) as (proxy_url, counter):
            client_timeout = client_timeout_s(tasks)
            client = run_client(proxy_url, tasks=tasks, workdir=workdir, timeout_s=client_timeout)
        # what the client says of the proxy's URL, it says of the server's
        said = {k: (getattr(client, k) or "").replace(proxy_url, base_url) for k in _SAID}
        client = client.model_copy(update=said)
        checks = [_client_check(client, tasks, client_timeout, counter.snapshot())]
        if client.flow_run_id is not None:
            checks += _read_back(api, client, timeout_s)
        if checks[0].ok:
            checks.append(_emulation_check(base_url, tasks, counter.snapshot()))
    return ConformanceReport(
        url=base_url,
        tasks=tasks,
        timeout_s=timeout_s,
        client_version=client.client_version,
        flow_run_id=client.flow_run_id,
        task_run_ids=client.task_run_ids,
        checks=checks,
        traffic=counter.snapshot(),
    )


def _emulation_check(base_url: str, tasks: int, real: TrafficCounts) -> CheckResult:
    """The flow-runs emulation of this interpreter's Prefect client (flow_runs.client_shape)
    runs the flow once through a proxy of its own: what it sent against what the real
    client sent (`real`)."""
    shape = flow_runs.client_shape()
    who = f"the emulated {shape.version} client"
    scenario = flow_runs.scenario(RunConfig(tasks=tasks), f"conformance-{uuid.uuid4().hex[:8]}")
    with counting_proxy(base_url) as (proxy_url, counter):
        proxy = urlsplit(proxy_url)
        assert proxy.hostname and proxy.port
        try:
            emulated = replace(scenario, api_path=proxy.path)
            asyncio.run(run_once(Target(proxy.hostname, proxy.port), emulated))
        except StepFailed as exc:
            return CheckResult(name="emulation", ok=False, detail=f"{who}'s flow run: {exc}")
        # the proxy counts a request when it has relayed its answer
        wait_until(lambda: counter.snapshot().requests.get(_LOGS), timeout_s=10, interval_s=0.05)
        sent = counter.snapshot()
    differences = [
        f"{what} {key}: {sent_n} sent, the real client {real_n}"
        for what, mine, theirs in (
            ("request", sent.requests, real.requests),
            ("websocket", sent.websockets, real.websockets),
            ("message", sent.messages, real.messages),
            (
                "frames",
                {k: n for k, n in sent.frames.items() if k.endswith(" text")},
                {k: n for k, n in real.frames.items() if k.endswith(" text")},
            ),
        )
        for key in sorted(set(mine) | set(theirs))
        if (sent_n := mine.get(key, 0)) != (real_n := theirs.get(key, 0))
    ]
    if differences:
        detail = f"{who} does not send what the real one sent: {'; '.join(differences)}"
        return CheckResult(name="emulation", ok=False, detail=detail)
    detail = f"{who} sent what the real one sent ({sum(sent.requests.values())} requests)"
    return CheckResult(name="emulation", ok=True, detail=detail)


def _require_health(api: httpx.Client, base_url: str) -> None:
    try:
        status = api.get("/health").status_code
    except httpx.HTTPError as exc:
        raise ServerError(f"{base_url} does not answer: {exc!r}") from exc
    if status != 200:
        raise ServerError(f"{base_url} answers GET /health with {status}")


def _client_check(
    client: ClientRun, tasks: int, timeout_s: float, traffic: TrafficCounts
) -> CheckResult:
    """Whether the client ran its flow; when not, one line with the cause its output gives
    (the exception it ended in) and the server's refusals, its output the details."""
    who = f"the real Prefect {client.client_version or ''} client".replace("  ", " ")
    cause = cause_in(client.log_tail)
    if client.exit_code is None:
        detail = f"{who} did not finish its flow run within {timeout_s:g} s" + (
            f"; its output ends: {cause}" if cause else ""
        )
    elif client.state is None:
        detail = f"{who} failed (exit code {client.exit_code}) before it could report" + (
            f": {cause}" if cause else ""
        )
    elif client.state != "COMPLETED":
        detail = f"{who}'s flow run {client.flow_run_id} ended {client.state}: {client.message}"
    elif len(client.task_run_ids) != tasks:
        detail = f"{who} made {len(client.task_run_ids)} task runs, not {tasks}"
    else:
        made = f"flow run {client.flow_run_id} with {tasks} task runs"
        return CheckResult(
            name="client", ok=True, detail=f"{who} ran {made} in {client.duration_s:.1f} s"
        )
    if refused := _refusals(traffic):
        detail += f" ({refused})"
    return CheckResult(name="client", ok=False, detail=one_line(detail), details=client.log_tail)


def _refusals(traffic: TrafficCounts, most: int = 3) -> str:
    """The answers >= 400 the server gave the client, the most frequent first (not the CSRF
    token's 422 of a server with CSRF protection off): '' when there are none."""
    refused = sorted(
        ((n, key) for key, n in traffic.errors.items() if not key.endswith(_CSRF_OFF)),
        key=lambda found: -found[0],
    )
    shown = []
    for n, key in refused[:most]:
        request, status = key.rsplit(" ", 1)
        shown.append(f"{request} answered {status}" + (f", {n} times" if n > 1 else ""))
    return "; ".join(shown)


def _read_back(api: httpx.Client, client: ClientRun, timeout_s: float) -> list[CheckResult]:
    """The checks of what the server recorded, polled until one deadline `timeout_s` away."""
    flow_run_id, task_run_ids = str(client.flow_run_id), client.task_run_ids
    started = time.monotonic()
    n = len(task_run_ids)
    probes: list[tuple[str, Callable[[], str | None], str]] = [
        (
            "flow run",
            lambda: _flow_run_problem(api, flow_run_id),
            f"flow run {flow_run_id} is COMPLETED",
        ),
        (
            "task runs",
            lambda: _task_runs_problem(api, flow_run_id, task_run_ids),
            f"{n} of {n} task runs of flow run {flow_run_id} are COMPLETED",
        ),
        (
            "events",
            lambda: _events_problem(api, flow_run_id, task_run_ids),
            f"{FLOW_RUN_EVENT} of flow run {flow_run_id} and {len(TASK_RUN_EVENTS)} events of "
            f"each of its {n} task runs are queryable",
        ),
    ]
    results = []
    for name, probe, ok_detail in probes:
        problem = _poll(probe, deadline=started + timeout_s)
        if problem is None:
            after = round(time.monotonic() - started, 3)
            results.append(CheckResult(name=name, ok=True, detail=ok_detail, after_s=after))
        else:
            detail = one_line(f"the server answered /health but {problem} within {timeout_s:g} s")
            results.append(CheckResult(name=name, ok=False, detail=detail))
    return results


def _poll(probe: Callable[[], str | None], *, deadline: float) -> str | None:
    """None as soon as `probe` finds nothing missing; else what it last found missing, once
    the deadline has passed (it is asked at least once). A failed request is what is missing."""
    last: list[str | None] = [None]

    def settled() -> bool:
        try:
            last[0] = probe()
        except _Unanswered as exc:
            last[0] = str(exc)
        except (KeyError, TypeError, AttributeError) as exc:
            last[0] = f"answered in a shape the API does not have ({exc!r})"
        return last[0] is None

    try:
        wait_until(
            settled, timeout_s=max(0.0, deadline - time.monotonic()), interval_s=POLL_INTERVAL_S
        )
    except TimeoutError:
        return last[0]
    return None


class _Unanswered(Exception):
    """A read-back request that failed; its message says how."""


def _ask(api: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    """The JSON answer of a 200; _Unanswered saying what went wrong otherwise."""
    try:
        response = api.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise _Unanswered(f"did not answer {method} {path} ({exc!r})") from exc
    if response.status_code != 200:
        raise _Unanswered(
            f"answered {method} {path} with {response.status_code}: {response.text[:200]}"
        )
    try:
        return response.json()
    except ValueError as exc:
        raise _Unanswered(f"answered {method} {path} with something that is not JSON") from exc


def _few(ids: Sequence[str], most: int = 3) -> str:
    shown = ", ".join(ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def _flow_run_problem(api: httpx.Client, flow_run_id: str) -> str | None:
    try:
        flow_run = _ask(api, "GET", f"/flow_runs/{flow_run_id}")
    except _Unanswered as exc:
        return f"did not record flow run {flow_run_id}: it {exc}"
    state = (flow_run.get("state") or {}).get("type")
    if state != "COMPLETED":
        return f"did not record flow run {flow_run_id} as COMPLETED (it is {state})"
    return None


def _task_runs_problem(api: httpx.Client, flow_run_id: str, expected: list[str]) -> str | None:
    states: dict[str, str | None] = {}
    while True:  # pages until an empty one: a server may answer fewer than asked for
        body = {
            "flow_runs": {"id": {"any_": [flow_run_id]}},
            "sort": "ID_DESC",
            "limit": _TASK_RUNS_LIMIT,
            "offset": len(states),
        }
        page = _ask(api, "POST", "/task_runs/filter", body)
        new = {run["id"]: (run.get("state") or {}).get("type") for run in page}
        if not set(new) - set(states):
            break
        states |= new
    if not states:
        return f"recorded no task runs for flow run {flow_run_id}"
    missing = [i for i in expected if i not in states]
    if missing:
        return (
            f"recorded {len(expected) - len(missing)} of {len(expected)} task runs for flow run "
            f"{flow_run_id} (missing: {_few(missing)})"
        )
    unexpected = sorted(set(states) - set(expected))
    if unexpected:
        return (
            f"recorded {len(unexpected)} task runs for flow run {flow_run_id} that the client "
            f"did not make ({_few(unexpected)})"
        )
    not_completed = Counter(str(s) for s in states.values() if s != "COMPLETED")
    if not_completed:
        shown = ", ".join(f"{state}: {n}" for state, n in sorted(not_completed.items()))
        return (
            f"did not record {not_completed.total()} of {len(expected)} task runs of flow run "
            f"{flow_run_id} as COMPLETED ({shown})"
        )
    return None


def _resource_ids(api: httpx.Client, name: str, resource_ids: list[str]) -> set[str]:
    """Which of these resources have an event called `name`."""
    found: set[str] = set()
    for start in range(0, len(resource_ids), _EVENTS_CHUNK):
        chunk = resource_ids[start : start + _EVENTS_CHUNK]
        body = {
            "filter": {"event": {"name": [name]}, "resource": {"id": chunk}},
            "limit": _EVENTS_LIMIT,
        }
        page = _ask(api, "POST", "/events/filter", body)
        found |= {event["resource"]["prefect.resource.id"] for event in page["events"]}
    return found & set(resource_ids)


def _events_problem(api: httpx.Client, flow_run_id: str, task_run_ids: list[str]) -> str | None:
    flow_run = bool(_resource_ids(api, FLOW_RUN_EVENT, [f"prefect.flow-run.{flow_run_id}"]))
    task_runs = [f"prefect.task-run.{i}" for i in task_run_ids]
    found = {name: len(_resource_ids(api, name, task_runs)) for name in TASK_RUN_EVENTS}
    if not flow_run and not any(found.values()):
        return f"recorded no events for flow run {flow_run_id}"
    missing = [] if flow_run else [f"no {FLOW_RUN_EVENT} event"]
    missing += [
        f"{name} events of {n} of its {len(task_runs)} task runs"
        for name, n in found.items()
        if n < len(task_runs)
    ]
    return f"recorded for flow run {flow_run_id} {'; '.join(missing)}" if missing else None


# -- what the CLI shows ----------------------------------------------------------------------


def report_lines(report: ConformanceReport) -> list[str]:
    """One line per check ('ok' or 'FAIL', its name, what it found), then the summary."""
    lines = [f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {one_line(c.detail)}" for c in report.checks]
    if report.ok:
        lines.append(
            f"conformance ok: {report.url} serves the real Prefect {report.client_version} "
            f"client (a flow run with {report.tasks} tasks read back)"
        )
    else:
        first = one_line(report.failed[0].detail)
        lines.append(f"conformance failed ({len(report.failed)} of {len(report.checks)}): {first}")
    return lines


def traffic_rows(traffic: TrafficCounts) -> list[tuple[str, int]]:
    """What the client sent, as (what, count) rows: requests, answers >= 400, websockets,
    their frames and messages."""
    rows = list(traffic.requests.items())
    for key, n in traffic.errors.items():
        request, status = key.rsplit(" ", 1)
        rows.append((f"  answered {status}: {request}", n))
    rows += [(f"WEBSOCKET {path}", n) for path, n in traffic.websockets.items()]
    rows += [(f"  frames: {kind}", n) for kind, n in traffic.frames.items()]
    rows += [(f"  messages: {kind}", n) for kind, n in traffic.messages.items()]
    return rows
