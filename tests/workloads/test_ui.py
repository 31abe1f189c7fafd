"""The ui workload against a real Prefect server holding a small dataset made here: what setup
reads from it, that every request answers as expected, that a wrong expectation fails with a
message, an empty database, and a short measurement through the engine."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bench.cells.runner import CellRun, run_cell
from bench.core.errors import VerificationError
from bench.core.process import wait_until
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import RunningServer, start_server
from bench.workloads import get_workload, ui
from bench.workloads.base import WRITES_BESIDE, Check, api_client, created_id

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

pytestmark = pytest.mark.slow

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]

RUNS = 30
SPACING = dt.timedelta(minutes=150)  # 29 spacings: the runs span about 3 days
FAILED_EVERY = 5
DEPLOYED_EVERY = 3
LOGGED_RUN = 5  # not the newest: setup must find the run by its logs
LOGS = 60  # more than a page of logs holds
TASK_RUNS = 3
# the newest run, the 9 more within 24 h of it and a second run at the newest start time
IN_WINDOW = 11
# what the server emits for the dataset: 2 flows, 1 deployment, a Scheduled and an end
# state per run
EVENTS = 2 + 1 + 2 * RUNS


@dataclass(frozen=True)
class Dataset:
    """The server, what setup said of its empty database, and what was created in it."""

    server: RunningServer
    empty_database: str
    newest: dt.datetime
    starts: list[dt.datetime]
    deployed: list[str]  # ids of the deployment's runs
    deployment_id: str
    logged_run_id: str
    fixtures: dict[str, str]


def _post(client: httpx.Client, path: str, body: Any) -> Any:
    answer = client.post(path, json=body)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def _create_run(
    client: httpx.Client, flow_id: str, deployment_id: str | None, start: dt.datetime, end: str
) -> str:
    """A flow run created Scheduled at `start`, then forced to `end`, as a finished run."""
    body = {
        "flow_id": flow_id,
        "deployment_id": deployment_id,
        "name": f"ui-{start:%H%M%S}",
        "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": start.isoformat()}},
    }
    run_id = created_id(client.post("/flow_runs/", json=body), "flow run")
    changed = _post(
        client, f"/flow_runs/{run_id}/set_state", {"state": {"type": end}, "force": True}
    )
    assert changed["status"] == "ACCEPT", changed
    return run_id


def _create_dataset(client: httpx.Client) -> dict[str, Any]:
    flows = [created_id(client.post("/flows/", json={"name": f"ui-{k}"}), "flow") for k in (0, 1)]
    deployment_id = created_id(
        client.post("/deployments/", json={"name": "ui", "flow_id": flows[0]}), "deployment"
    )
    newest = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    starts = [newest - k * SPACING for k in range(RUNS - 1)] + [newest]
    runs, deployed = [], []
    for k, start in enumerate(starts):
        deployment = deployment_id if k % DEPLOYED_EVERY == 0 else None
        end = "FAILED" if k % FAILED_EVERY == FAILED_EVERY - 1 else "COMPLETED"
        runs.append(_create_run(client, flows[k % 2], deployment, start, end))
        if deployment:
            deployed.append(runs[-1])
    for run_id, tasks in ((runs[LOGGED_RUN], TASK_RUNS), (runs[0], 1)):
        for t in range(tasks):
            task = {
                "flow_run_id": run_id,
                "task_key": f"ui-task-{t}",
                "dynamic_key": str(t),
                "name": f"ui-task-{t}",
                "state": {"type": "COMPLETED"},
            }
            created_id(client.post("/task_runs/", json=task), "task run")
    logs = [
        {
            "name": "ui",
            "level": 20,
            "message": f"line {n}",
            "timestamp": (starts[LOGGED_RUN] + dt.timedelta(seconds=n)).isoformat(),
            "flow_run_id": runs[LOGGED_RUN],
        }
        for n in range(LOGS)
    ]
    assert client.post("/logs/", json=logs).status_code == 201
    return {
        "newest": newest,
        "starts": starts,
        "deployed": deployed,
        "deployment_id": deployment_id,
        "logged_run_id": runs[LOGGED_RUN],
    }


def _events_stored(client: httpx.Client) -> bool:
    body = {"filter": {"occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 1}
    return _post(client, "/events/filter", body)["total"] == EVENTS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    """A server of its own (the dataset is written: the shared one must stay as it is), asked
    for fixtures once empty and once the dataset is in it and its events are stored."""
    tmp = tmp_path_factory.mktemp("ui-server")
    # started as the preload's seeding server is (no late-runs service): the runs are created
    # Scheduled in the past, and a Late mark racing a run's end state would add an event
    setup = ServerSetup(
        db="sqlite", broker="memory", logdir=tmp, datadir=tmp / "data", seeding=True
    )
    with start_server(make_server("python"), setup) as server:
        with api_client(server.base_url) as client:
            with pytest.raises(VerificationError) as empty:
                ui.UI.create_fixtures(client)
            made = _create_dataset(client)
            # events reach the database through the broker, seconds later
            wait_until(lambda: _events_stored(client), timeout_s=30, interval_s=0.2)
            # they are stored: they may be as young as they are
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(ui, "EVENTS_SETTLED_S", 0.0)
                fixtures = ui.UI.create_fixtures(client)
        yield Dataset(server, str(empty.value), fixtures=fixtures, **made)


def test_the_ui_workload_is_registered() -> None:
    assert get_workload("ui") is ui.UI
    assert len({e.name for e in ui.UI.endpoints}) == len(ui.UI.endpoints) == 9


def test_an_empty_database_is_refused_with_one_clear_line(dataset: Dataset) -> None:
    assert "database has none" in dataset.empty_database
    assert "--preload N" in dataset.empty_database
    assert "\n" not in dataset.empty_database


def test_setup_reads_what_was_created(dataset: Dataset) -> None:
    fixtures = dataset.fixtures
    assert ui._when(fixtures["window_end"]) == dataset.newest
    assert ui._when(fixtures["window_start"]) == dataset.newest - dt.timedelta(days=1)
    assert fixtures["flow_runs"] == str(RUNS)
    assert fixtures["window_runs"] == str(IN_WINDOW)
    assert fixtures["history_runs"] == str(IN_WINDOW - 2)  # not the two at the window's end
    assert fixtures["flow_run_id"] == dataset.logged_run_id
    assert (fixtures["run_logs"], fixtures["run_task_runs"]) == (str(LOGS), str(TASK_RUNS))
    assert fixtures["deployment_id"] == dataset.deployment_id
    assert fixtures["deployment_runs"] == str(len(dataset.deployed))
    assert fixtures["events"] == str(EVENTS)


def test_the_24h_count_is_the_runs_created_in_the_window(dataset: Dataset) -> None:
    newest = dataset.newest
    created = sum(newest - dt.timedelta(days=1) <= s <= newest for s in dataset.starts)
    assert created == IN_WINDOW
    (endpoint,) = [e for e in ui.UI.endpoints if e.name == "count flow_runs 24h"]
    request = endpoint.resolve("", dataset.fixtures)
    with api_client(dataset.server.base_url) as client:
        answer = client.post(request.path, content=request.body)
    assert answer.json() == created


def test_every_request_answers_as_expected(dataset: Dataset) -> None:
    with api_client(dataset.server.base_url) as client:
        ui.UI.verify(client, dataset.fixtures)  # raises VerificationError naming the request


def _later(text: str) -> str:
    when = ui._when(text)
    assert when is not None
    return (when + dt.timedelta(seconds=1)).isoformat()


# (fixture, a wrong value of it, the request whose check fails first, what its message says)
WRONG: list[tuple[str, Callable[[Dataset], str], str, str]] = [
    ("flow_runs", lambda d: str(RUNS + 1), "count flow_runs", f"expected {RUNS + 1} flow runs"),
    ("window_runs", lambda d: "3", "count flow_runs 24h", "expected 3 flow runs in the 24"),
    # a second later: the same runs in the window, but none of them starts at its end
    ("window_end", lambda d: _later(d.fixtures["window_end"]), "filter flow_runs", "not at"),
    ("history_runs", lambda d: "1", "flow_runs history", f"count {IN_WINDOW - 2} flow runs"),
    ("deployment_runs", lambda d: "1", "paginate flow_runs", "expected count 1"),
    # the newest run: its one task run is not the logged run's three
    ("flow_run_id", lambda d: d.deployed[0], "paginate task_runs", "expected count 3"),
    ("run_logs", lambda d: "7", "filter logs", "expected 7 log lines, got 50"),
    ("events", lambda d: "5", "filter events", f"expected a total of 5 events, got {EVENTS}"),
]


@pytest.mark.parametrize(("key", "wrong", "endpoint", "message"), WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_expected_answer_fails_with_a_message(
    dataset: Dataset, key: str, wrong: Callable[[Dataset], str], endpoint: str, message: str
) -> None:
    fixtures = dataset.fixtures | {key: wrong(dataset)}
    with api_client(dataset.server.base_url) as client, pytest.raises(VerificationError) as err:
        ui.UI.verify(client, fixtures)
    assert str(err.value).startswith(endpoint), err.value
    assert message in str(err.value), err.value


@pytest.mark.parametrize(
    ("check", "body", "problem"),
    [
        (ui.check_count_all, b"true", "expected 30 flow runs, got True"),
        (ui.check_count_all, b"<html>", "not JSON"),
        (ui.check_scatter, b'[{"id": "a", "state_type": "COMPLETED"}]', "expected 30 flow runs"),
        (
            ui.check_logs,
            b'[{"id": "a", "flow_run_id": "r"}, {"id": "a", "flow_run_id": "r"}]',
            "do not have 2 distinct ids",
        ),
        (
            ui.check_events,
            b'{"total": 2, "events": [{"id": "a", "event": "prefect.log.write"}, {"id": "b"}]}',
            "leaves out",
        ),
    ],
    ids=["a bool", "not JSON", "too few", "repeated ids", "a left-out event"],
)
def test_a_malformed_answer_is_a_problem(check: Check, body: bytes, problem: str) -> None:
    """No server: the checks alone, on answers a broken server could give."""
    fixtures = {"flow_runs": "30", "run_logs": "2", "flow_run_id": "r", "events": "2"}
    found = check(body, fixtures)
    assert found is not None and problem in found, found


def test_measured_through_the_engine(
    dataset: Dataset, cell_run: MakeRun, progress: MakeProgress
) -> None:
    run = cell_run(
        url=dataset.server.base_url,
        workload="ui",
        duration_s=0.3,
        warmup_s=0.1,
        concurrency=[1],
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    assert [e.name for e in result.endpoints] == [e.name for e in ui.UI.endpoints]
    for ep in result.endpoints:
        # every answer sampled under load passed its check: none counted "invalid"
        assert ep.errors == {} and ep.requests > 0, (ep.name, ep.errors, ep.problems)


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"31", None), (b"29", "expected at least 30 flow runs, got 29"), (b"true", "got True")],
    ids=["more", "fewer", "a bool"],
)
def test_written_beside_the_count_may_only_grow(body: bytes, problem: str | None) -> None:
    """No server: with WRITES_BESIDE, what setup counted is the least there may be."""
    found = ui.check_count_all(body, {"flow_runs": "30", WRITES_BESIDE: "yes"})
    assert found == problem if problem is None else (found is not None and problem in found)
    assert ui.check_count_all(b"31", {"flow_runs": "30"}) == "expected 30 flow runs, got 31"


def test_mixed_reads_the_ui_beside_flow_runs_and_reports_them_apart(
    dataset: Dataset, cell_run: MakeRun, progress: MakeProgress
) -> None:
    """Flow runs written while the UI's reads are sent, on the dataset's server (last in the
    module: it writes): each with its own users, each its own measurement, every read's answer
    checked though the flow runs grow. The real client's flow run comes first (conformance)."""
    run = cell_run(
        url=dataset.server.base_url,
        workload="mixed",
        duration_s=4.0,
        warmup_s=0.3,
        concurrency=[1],
        readers=2,
        tasks=2,
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    writer, reader = result.scenarios
    assert writer.name == "flow run, 2 tasks, beside 2 ui readers" and writer.concurrency == 1
    assert reader.name == "ui reads, beside 1 writer" and reader.concurrency == 2
    # SQLite answers a write 503 ("database is locked") while others write: counted, no more
    assert writer.completed > 0, writer.problems
    assert all(set(step.errors) <= {"503"} for step in writer.steps), writer.problems
    assert {k: d.lost for k, d in writer.delivery.items()} == {"flow_runs": 0, "task_runs": 0}
    assert reader.completed > 0 and not reader.failed, reader.problems
    assert [s.name for s in reader.steps] == [e.name for e in ui.UI.endpoints]
    # a visit begun in the warm-up counts when it ends in the window, its first reads did not
    assert all(s.requests >= reader.completed - 2 and not s.errors for s in reader.steps), [
        (s.name, s.requests, s.errors) for s in reader.steps
    ]
    assert reader.delivery == {} and writer.server_cpu_cores == reader.server_cpu_cores
    with api_client(dataset.server.base_url) as client:
        # the reads were checked while the database held more runs than setup counted
        assert client.post("/flow_runs/count", json={}).json() > RUNS + writer.completed
