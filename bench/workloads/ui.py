"""What the Prefect UI reads when someone opens its dashboard, runs, flow-run and events pages,
measured on a database that holds flow runs (`--preload N`).

Each body is the one the UI sends, read from Prefect's source (github.com/PrefectHQ/prefect,
ui-v2/ is the React UI that 3.9.1 serves by default, checked against the bundle 3.9.1 ships in
prefect/server/ui-v2/assets/), with its time window anchored in the data rather than the clock:
the UI's "last 24 hours" ends now, ours ends at the newest expected start time in the
database, so a seeded database restored days later is read the same way and every answer is
known in advance.

- count flow_runs: `{}`, ui-v2/src/routes/dashboard.tsx (loader and RouteComponent,
  `buildCountFlowRunsQuery({}, 30_000)`: is the dashboard empty?) and ui-v2/src/routes/runs/
  index.tsx (the runs page's total).
- count flow_runs 24h: the dashboard's flow-runs card total, ui-v2/src/components/dashboard/
  flow-runs-card/index.tsx (`totalCountQuery`: the card's filter through
  `toFlowRunsCountFilter`, which drops sort and offset).
- filter flow_runs (dashboard): the same card's `flowRunsQuery` (also prefetched by
  dashboard.tsx's loader): sorted by expected start, no limit, so the server's default (200).
- flow_runs history: neither UI's dashboard sends `/flow_runs/history` in 3.9.1 (the React one
  draws its chart from the list above; the Vue one's only sender is a flow's activity chart
  from the flow's creation, empty on a seeded database). The body is the dashboard's history
  query, ui-v2/src/components/dashboard/task-runs-card/task-runs-history-filter.ts (the span
  in 20 intervals: `history_interval_seconds` = 86400 // 20), given the card's flow-run filter.
- ui flow_runs history: the runs page's scatter plot, ui-v2/src/routes/runs/index.tsx
  (`buildHistoryFilter` without filters): `POST /ui/flow_runs/history`, 1000 runs.
- paginate flow_runs (deployment): the runs page filtered by a deployment (`?deployments=ID`),
  runs/index.tsx `buildPaginationBody`: page 1 of 100, newest start first. Not the deployment
  page's runs tab (components/deployments/deployment-details-runs-tab.tsx), whose default
  filter names every state but "Scheduled": the late-runs service turning Scheduled runs Late
  during a measurement would change its count.
- paginate task_runs (flow run): the flow-run page's task runs, ui-v2/src/components/flow-runs/
  flow-run-details-page/flow-run-task-runs.tsx (page 1 of 20; `countData` is the count that
  setup asks for).
- filter logs: the flow-run page's logs, flow-run-details-page/flow-run-logs.tsx (first page
  of `buildInfiniteFilterLogsQuery`, 50 lines, level 0 and above, oldest first).
- filter events: the events page, ui-v2/src/api/events/filters.ts `buildEventsFilterFromSearch`
  (24 h, newest first, 50 a page, `prefect.log.write` left out), its window ending at the
  newest event older than EVENTS_SETTLED_S: events reach the database through the broker
  seconds after they occur, and one still on its way must not change the expected total.

Read beside writes (--workload mixed), the answers stay known: the windows end at what the
database held at setup (the newest start, a settled event), so the runs written since are outside
them, and the logs and task runs read are of one finished run. Only the unbounded count and the
scatter plot's newest runs may grow: checked as at least what setup read (WRITES_BESIDE).

setup reads every expected answer from the server and cross-checks what it can: the history's
buckets must add up to a count, the dashboard list must start at the newest run, the
deployment's runs are counted by the flow runs' own column. A database without flow runs is
refused with one line (VerificationError): every answer would be empty, a number about nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx

from bench.core.errors import VerificationError
from bench.workloads.base import (
    WRITES_BESIDE,
    Endpoint,
    Fixtures,
    Workload,
    json_check,
    post_json,
)

DAY = dt.timedelta(days=1)
# Prefect's PREFECT_SERVER_API_DEFAULT_LIMIT: the dashboard's list sends no limit and gets this
DEFAULT_LIMIT = 200
HISTORY_INTERVALS = 20
HISTORY_INTERVAL_S = int(DAY.total_seconds()) // HISTORY_INTERVALS
SCATTER_LIMIT = 1000
RUNS_PAGE_LIMIT = 100
TASK_RUNS_PAGE_LIMIT = 20
LOGS_LIMIT = 50
EVENTS_LIMIT = 50
EXCLUDED_EVENTS = ["prefect.log.write"]
# Events younger than this may still be on their way to the database (Prefect's event
# persister flushes every 5 s): the events window ends before them.
EVENTS_SETTLED_S = 30.0
# the deployment to page through when the database has none: no run matches
NO_DEPLOYMENT = str(uuid.UUID(int=0))

WINDOW = {"after_": "{window_start}", "before_": "{window_end}"}
FLOW_RUNS_IN_WINDOW = {"operator": "and_", "expected_start_time": WINDOW}


def _task_runs_of(flow_run_id: str) -> dict[str, Any]:
    """The flow-run page's task-run filter: the run's own task runs, not its subflows'."""
    return {
        "operator": "and_",
        "flow_run_id": {"operator": "and_", "any_": [flow_run_id], "is_null_": False},
        "subflow_runs": {"exists_": False},
    }


RUN_TASK_RUNS = _task_runs_of("{flow_run_id}")
EVENTS_FILTER = {
    "occurred": {"since": "{events_since}", "until": "{events_until}"},
    "order": "DESC",
    "event": {"exclude_name": EXCLUDED_EVENTS},
}


def _when(text: Any) -> dt.datetime | None:
    """A timestamp of an answer, or None when it is not one."""
    try:
        return dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def _list_problem(data: Any, expected: int, what: str) -> str | None:
    """What is wrong with a list that should hold `expected` distinct objects, or None."""
    if not isinstance(data, list):
        return f"expected a list of {what}, got {str(data)[:100]}"
    if len(data) != expected:
        return f"expected {expected} {what}, got {len(data)}"
    if not all(isinstance(item, dict) and "id" in item for item in data):
        return f"an item of the list of {what} is not an object with an id"
    if len({item["id"] for item in data}) != expected:
        return f"the {expected} {what} do not have {expected} distinct ids"
    return None


def _count_problem(data: Any, expected: str, what: str, at_least: bool = False) -> str | None:
    # bool is an int to Python, never a count
    if not isinstance(data, int) or isinstance(data, bool):
        return f"expected {expected} {what}, got {str(data)[:100]}"
    if data < int(expected) or (data > int(expected) and not at_least):
        least = "at least " if at_least else ""
        return f"expected {least}{expected} {what}, got {data}"
    return None


@json_check("count flow_runs")
def check_count_all(data: Any, fixtures: Fixtures) -> str | None:
    """The number of flow runs in the database (at least that many, with writes beside)."""
    return _count_problem(data, fixtures["flow_runs"], "flow runs", WRITES_BESIDE in fixtures)


@json_check("count flow_runs 24h")
def check_count_window(data: Any, fixtures: Fixtures) -> str | None:
    """The number of flow runs expected to start in the 24 h window."""
    return _count_problem(data, fixtures["window_runs"], "flow runs in the 24 h window")


@json_check("filter flow_runs")
def check_dashboard_runs(data: Any, fixtures: Fixtures) -> str | None:
    """The window's runs, newest first, as many as the default limit lets through: the first
    is expected to start at the window's end (the newest run), the last not before its start."""
    expected = min(DEFAULT_LIMIT, int(fixtures["window_runs"]))
    if problem := _list_problem(data, expected, "flow runs (the server's default limit)"):
        return problem
    first, last = (
        _when(data[0].get("expected_start_time")),
        _when(data[-1].get("expected_start_time")),
    )
    if first != _when(fixtures["window_end"]):
        return f"the first flow run starts at {first}, not at the newest {fixtures['window_end']}"
    window_start = _when(fixtures["window_start"])
    assert window_start is not None  # setup wrote it
    if last is None or last < window_start:
        return f"the last flow run starts at {last}, before the window's {window_start}"
    return None


@json_check("flow_runs history")
def check_history(data: Any, fixtures: Fixtures) -> str | None:
    """HISTORY_INTERVALS buckets from the window's start, their runs adding up to the runs
    that start in [start, end): the bucket after the last one would hold the newest run."""
    if not isinstance(data, list) or len(data) != HISTORY_INTERVALS:
        return f"expected {HISTORY_INTERVALS} intervals, got {str(data)[:100]}"
    if _when(data[0].get("interval_start") if isinstance(data[0], dict) else None) != _when(
        fixtures["window_start"]
    ):
        return f"the first interval does not start at {fixtures['window_start']}: {data[0]}"
    try:
        runs = sum(state["count_runs"] for bucket in data for state in bucket["states"])
    except (KeyError, TypeError):
        return f"an interval is not a history bucket: {str(data)[:200]}"
    expected = int(fixtures["history_runs"])
    if runs != expected:
        return f"the intervals count {runs} flow runs, {expected} start in them"
    return None


@json_check("ui flow_runs history")
def check_scatter(data: Any, fixtures: Fixtures) -> str | None:
    """The newest SCATTER_LIMIT runs (or all of them), each with its state type; with writes
    beside, those written since setup may be among them."""
    expected = min(SCATTER_LIMIT, int(fixtures["flow_runs"]))
    if WRITES_BESIDE in fixtures and isinstance(data, list):
        expected = min(max(len(data), expected), SCATTER_LIMIT)
    if problem := _list_problem(data, expected, "flow runs"):
        return problem
    if not all(item.get("state_type") for item in data):
        return "a flow run of the history has no state type"
    return None


def _page_problem(data: Any, expected: int, limit: int, what: str) -> str | None:
    """What is wrong with page 1 of a /paginate answer over `expected` objects, or None."""
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        return f"expected a page of {what}, got {str(data)[:100]}"
    pages = -(-expected // limit)
    got = {k: data.get(k) for k in ("count", "pages", "page", "limit")}
    if got != {"count": expected, "pages": pages, "page": 1, "limit": limit}:
        return f"expected count {expected}, pages {pages}, page 1, limit {limit}; got {got}"
    return _list_problem(data["results"], min(limit, expected), what)


@json_check("paginate flow_runs")
def check_deployment_page(data: Any, fixtures: Fixtures) -> str | None:
    """Page 1 of the deployment's runs, each of them the deployment's."""
    expected = int(fixtures["deployment_runs"])
    if problem := _page_problem(data, expected, RUNS_PAGE_LIMIT, "flow runs"):
        return problem
    if any(run.get("deployment_id") != fixtures["deployment_id"] for run in data["results"]):
        return f"a flow run of the page is not deployment {fixtures['deployment_id']}'s"
    return None


@json_check("paginate task_runs")
def check_task_runs_page(data: Any, fixtures: Fixtures) -> str | None:
    """Page 1 of the flow run's task runs, each of them the flow run's."""
    expected = int(fixtures["run_task_runs"])
    if problem := _page_problem(data, expected, TASK_RUNS_PAGE_LIMIT, "task runs"):
        return problem
    if any(task.get("flow_run_id") != fixtures["flow_run_id"] for task in data["results"]):
        return f"a task run of the page is not flow run {fixtures['flow_run_id']}'s"
    return None


@json_check("filter logs")
def check_logs(data: Any, fixtures: Fixtures) -> str | None:
    """The flow run's first LOGS_LIMIT log lines (or all), each of them the flow run's."""
    expected = min(LOGS_LIMIT, int(fixtures["run_logs"]))
    if problem := _list_problem(data, expected, "log lines"):
        return problem
    if any(log.get("flow_run_id") != fixtures["flow_run_id"] for log in data):
        return f"a log line is not flow run {fixtures['flow_run_id']}'s"
    return None


@json_check("filter events")
def check_events(data: Any, fixtures: Fixtures) -> str | None:
    """The window's event total, its first page, and none of the events left out."""
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        return f"expected a page of events, got {str(data)[:100]}"
    expected = int(fixtures["events"])
    if data.get("total") != expected:
        return f"expected a total of {expected} events, got {data.get('total')!r}"
    if problem := _list_problem(data["events"], min(EVENTS_LIMIT, expected), "events"):
        return problem
    if any(event.get("event") in EXCLUDED_EVENTS for event in data["events"]):
        return f"an event the filter leaves out is in the page: {EXCLUDED_EVENTS}"
    return None


def _count(client: httpx.Client, path: str, body: dict[str, Any]) -> int:
    """A count the server answers; VerificationError if the answer is not one."""
    answer = post_json(client, path, body)
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise VerificationError(f"POST {path} answered {str(answer)[:100]}, not a count")
    return answer


def _objects(client: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A list of objects the server answers; VerificationError if the answer is not one."""
    answer = post_json(client, path, body)
    if not isinstance(answer, list) or not all(isinstance(item, dict) for item in answer):
        raise VerificationError(f"POST {path} answered {str(answer)[:100]}, not a list")
    return answer


def _field(item: dict[str, Any], key: str, path: str) -> str:
    """A text field of an object the server answered; VerificationError if it has none."""
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise VerificationError(f"POST {path}: an answer has no {key}: {str(item)[:200]}")
    return value


def _window_fixtures(client: httpx.Client) -> dict[str, str]:
    """The flow runs, the 24 h window before the newest expected start, what it holds."""
    total = _count(client, "/flow_runs/count", {})
    if total == 0:
        raise VerificationError(
            "the ui workload reads flow runs and the database has none: "
            "give --preload N (or --url a server that holds some)"
        )
    # a run with no state has no expected start: it cannot anchor the window
    started = {"expected_start_time": {"after_": "1970-01-01T00:00:00Z"}}
    path = "/flow_runs/filter"
    body = {"sort": "EXPECTED_START_TIME_DESC", "limit": 1, "flow_runs": started}
    newest = _objects(client, path, body)
    if not newest:
        raise VerificationError(f"none of the {total} flow runs has an expected start time")
    # the server's own text, so that the runs starting at the window's end are found by it
    end = _field(newest[0], "expected_start_time", path)
    anchor = _when(end)
    if anchor is None:
        raise VerificationError(f"POST {path}: the newest run starts at {end!r}, not a time")
    start = (anchor - DAY).isoformat()
    window = {"after_": start, "before_": end}
    window_runs = _count(
        client,
        "/flow_runs/count",
        {"flow_runs": {"operator": "and_", "expected_start_time": window}},
    )
    at_end = {"after_": end, "before_": end}
    newest_runs = _count(client, "/flow_runs/count", {"flow_runs": {"expected_start_time": at_end}})
    if not 1 <= newest_runs <= window_runs <= total:
        raise VerificationError(
            f"the counts disagree: {total} flow runs, {window_runs} in the 24 h before the "
            f"newest expected start {end}, {newest_runs} at it"
        )
    return {
        "flow_runs": str(total),
        "window_start": start,
        "window_end": end,
        "window_runs": str(window_runs),
        # the history's intervals end where the window does, without it
        "history_runs": str(window_runs - newest_runs),
        "newest_run_id": _field(newest[0], "id", path),
    }


def _run_fixtures(client: httpx.Client, newest_run_id: str) -> dict[str, str]:
    """A flow run whose page has something to show (the run of the newest log line, or the
    newest run), and its log lines and task runs."""
    # no filter says "of a flow run": a worker's lines are not, the newest may be some of those
    newest_logs = _objects(client, "/logs/filter", {"sort": "TIMESTAMP_DESC"})
    of_runs = [log["flow_run_id"] for log in newest_logs if log.get("flow_run_id")]
    flow_run_id = str(of_runs[0] if of_runs else newest_run_id)
    # as many as a page may hold: the check needs to know whether there are LOGS_LIMIT
    body = {"limit": DEFAULT_LIMIT, "logs": {"flow_run_id": {"any_": [flow_run_id]}}}
    logs = _objects(client, "/logs/filter", body)
    task_runs = _count(client, "/task_runs/count", {"task_runs": _task_runs_of(flow_run_id)})
    return {"flow_run_id": flow_run_id, "run_logs": str(len(logs)), "run_task_runs": str(task_runs)}


def _deployment_fixtures(client: httpx.Client) -> dict[str, str]:
    """The deployment of the newest run that has one, and how many runs it has (counted by
    the runs' own column, not the deployments filter the page uses); none: NO_DEPLOYMENT."""
    path = "/flow_runs/filter"
    deployed = {"deployment_id": {"is_null_": False}}
    body = {"sort": "EXPECTED_START_TIME_DESC", "limit": 1, "flow_runs": deployed}
    newest = _objects(client, path, body)
    deployment_id = _field(newest[0], "deployment_id", path) if newest else NO_DEPLOYMENT
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
    return {
        "deployment_id": deployment_id,
        "deployment_runs": str(_count(client, "/flow_runs/count", body)),
    }


def _event_page(client: httpx.Client, occurred: dict[str, str]) -> tuple[list[Any], int]:
    """The first event and the total of the events page's filter over `occurred`."""
    answer = post_json(
        client, "/events/filter", {"filter": EVENTS_FILTER | {"occurred": occurred}, "limit": 1}
    )
    events = answer.get("events") if isinstance(answer, dict) else None
    total = answer.get("total") if isinstance(answer, dict) else None
    if not isinstance(events, list) or not isinstance(total, int) or total < len(events):
        raise VerificationError(f"POST /events/filter answered {str(answer)[:200]}")
    return events, total


def _event_fixtures(client: httpx.Client) -> dict[str, str]:
    """The events page's window: the 24 h up to the newest event old enough to be stored
    (or up to that age, when there is none), and how many events it holds."""
    settled = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=EVENTS_SETTLED_S)).isoformat()
    newest, _ = _event_page(client, {"since": "2000-01-01T00:00:00Z", "until": settled})
    until = _field(newest[0], "occurred", "/events/filter") if newest else settled
    until_at = _when(until)
    if until_at is None:
        raise VerificationError(f"POST /events/filter: an event occurred at {until!r}")
    since = (until_at - DAY).isoformat()
    _, total = _event_page(client, {"since": since, "until": until})
    if newest and total < 1:
        raise VerificationError(f"POST /events/filter: the event that occurred at {until} is gone")
    return {"events_since": since, "events_until": until, "events": str(total)}


def create_fixtures(client: httpx.Client) -> dict[str, str]:
    """Every expected answer, read from the server: VerificationError on an empty database."""
    fixtures = _window_fixtures(client)
    fixtures |= _run_fixtures(client, fixtures["newest_run_id"])
    fixtures |= _deployment_fixtures(client)
    fixtures |= _event_fixtures(client)
    return fixtures


UI = Workload(
    name="ui",
    description="the UI's reads: dashboard counts, lists and history, runs page, logs, events",
    setup=create_fixtures,
    endpoints=(
        Endpoint("count flow_runs", "POST", "/flow_runs/count", body={}, check=check_count_all),
        Endpoint(
            "count flow_runs 24h",
            "POST",
            "/flow_runs/count",
            body={"flow_runs": FLOW_RUNS_IN_WINDOW},
            check=check_count_window,
        ),
        Endpoint(
            "filter flow_runs (dashboard)",
            "POST",
            "/flow_runs/filter",
            body={
                "sort": "EXPECTED_START_TIME_DESC",
                "offset": 0,
                "flow_runs": FLOW_RUNS_IN_WINDOW,
            },
            check=check_dashboard_runs,
        ),
        Endpoint(
            "flow_runs history",
            "POST",
            "/flow_runs/history",
            body={
                "history_start": "{window_start}",
                "history_end": "{window_end}",
                "history_interval_seconds": HISTORY_INTERVAL_S,
                "flow_runs": FLOW_RUNS_IN_WINDOW,
            },
            check=check_history,
        ),
        Endpoint(
            "ui flow_runs history",
            "POST",
            "/ui/flow_runs/history",
            body={"sort": "EXPECTED_START_TIME_DESC", "limit": SCATTER_LIMIT, "offset": 0},
            check=check_scatter,
        ),
        Endpoint(
            "paginate flow_runs (deployment)",
            "POST",
            "/flow_runs/paginate",
            body={
                "page": 1,
                "limit": RUNS_PAGE_LIMIT,
                "sort": "START_TIME_DESC",
                "deployments": {"operator": "and_", "id": {"any_": ["{deployment_id}"]}},
            },
            check=check_deployment_page,
        ),
        Endpoint(
            "paginate task_runs (flow run)",
            "POST",
            "/task_runs/paginate",
            body={
                "task_runs": RUN_TASK_RUNS,
                "sort": "EXPECTED_START_TIME_DESC",
                "page": 1,
                "limit": TASK_RUNS_PAGE_LIMIT,
            },
            check=check_task_runs_page,
        ),
        Endpoint(
            "filter logs",
            "POST",
            "/logs/filter",
            body={
                "limit": LOGS_LIMIT,
                "sort": "TIMESTAMP_ASC",
                "logs": {
                    "operator": "and_",
                    "level": {"ge_": 0},
                    "flow_run_id": {"any_": ["{flow_run_id}"]},
                },
                "offset": 0,
            },
            check=check_logs,
        ),
        Endpoint(
            "filter events",
            "POST",
            "/events/filter",
            body={"filter": EVENTS_FILTER, "limit": EVENTS_LIMIT},
            check=check_events,
        ),
    ),
)
