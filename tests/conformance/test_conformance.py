"""The conformance check against real servers: the real Python Prefect server passes, a
stand-in that answers everything but records nothing fails with one clear line, bad input is
exit 2; and the counting proxy forwards unchanged what it counts (against a real HTTP and
websocket server in this process)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from bench.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from bench.conformance.proxy import counting_proxy, path_template
from bench.conformance.real_client import (
    DEFAULT_TASKS,
    TASK_RUN_EVENTS,
    ConformanceReport,
    check,
)
from bench.core import ownership
from bench.core.errors import ConfigError
from bench.core.ports import LOOPBACK, free_port
from bench.core.process import wait_until
from bench.servers.running import RunningServer

# What the real Prefect 3.9.1 client sent for one flow run, measured here through the proxy
# (identical for 1, 10 and 50 tasks). Issue 9 counted from the server's access log and listed
# neither GET /admin/version, GET /flows/{id}, POST /logs/ nor the second GET /csrf-token (the
# sync and the async client each ask once; the server answers 422: CSRF protection is off).
PER_FLOW_RUN = {
    "GET /api/admin/storage": 2,
    "GET /api/admin/version": 2,
    "GET /api/csrf-token": 2,
    "GET /api/events/in": 1,
    "GET /api/flow_runs/{id}": 1,
    "GET /api/flows/{id}": 1,
    "POST /api/flow_runs/": 1,
    "POST /api/flow_runs/{id}/set_state": 2,
    "POST /api/flows/": 1,
    "POST /api/logs/": 1,
}


@pytest.fixture(autouse=True)
def sigterm_handler_put_back() -> Iterator[None]:
    """main() turns SIGTERM into Ctrl-C for its process: here, for the test's time only."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def records_nothing_standin() -> FastAPI:
    """A stand-in for a broken server: it answers every request with plausible JSON (enough
    for the real client to run its flow to the end), accepts events over /api/events/in, and
    records nothing: flow runs stay PENDING, no task runs, no events."""
    app = FastAPI()

    @app.websocket("/api/events/in")
    async def events_in(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="prefect")
        await websocket.receive_text()  # the client's auth message
        await websocket.send_json({"type": "auth_success"})
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def anything(path: str, request: Request) -> Any:
        body = json.loads(await request.body() or b"{}")
        parts = [*path.split("/"), "", ""]  # a short path has empty parts
        new_id = parts[2] or str(uuid.uuid4())
        if path == "api/health":
            return True
        if path == "api/admin/version":
            return "3.9.1"
        if path == "api/csrf-token":
            expiration = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            return {
                "token": "t",
                "client": request.query_params["client"],
                "expiration": expiration,
            }
        if path.endswith("/set_state"):
            state = body["state"] | {"id": str(uuid.uuid4()), "timestamp": _now()}
            return {"status": "ACCEPT", "state": state, "details": {"type": "accept_details"}}
        if parts[1] == "flows":
            return {"id": new_id, "name": body.get("name", "flow")}
        if parts[1] == "flow_runs":
            pending = {"type": "PENDING", "name": "Pending", "id": str(uuid.uuid4())}
            flow_id = body.get("flow_id", str(uuid.uuid4()))
            return {"id": new_id, "name": "standin", "flow_id": flow_id, "state": pending}
        if path == "api/task_runs/filter":
            return []
        if path == "api/events/filter":
            return {"events": [], "total": 0, "next_page": None}
        return {"echo": {"method": request.method, "path": path, "body": body}}

    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on 127.0.0.1 in a thread of this process; yields its API URL."""
    listener = socket.create_server((LOOPBACK, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout_s=10)
        yield f"http://{LOOPBACK}:{listener.getsockname()[1]}/api"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture
def standin() -> Iterator[str]:
    with serving(records_nothing_standin()) as url:
        yield url


# -- the proxy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "template"),
    [
        ("/api/flows/", "/api/flows/"),
        (f"/api/flow_runs/{uuid.uuid4()}/set_state", "/api/flow_runs/{id}/set_state"),
        (f"/api/csrf-token?client={uuid.uuid4()}", "/api/csrf-token"),
        (f"/api/flow_runs/{str(uuid.uuid4()).upper()}", "/api/flow_runs/{id}"),
        ("/api/flows/name/my-flow", "/api/flows/name/my-flow"),
    ],
)
def test_path_template(target: str, template: str) -> None:
    assert path_template(target) == template


def test_proxy_forwards_requests_unchanged_and_counts_them(standin: str) -> None:
    run_id = str(uuid.uuid4())
    requests = [
        ("POST", "/flows/", {"name": "f"}),
        ("GET", f"/flow_runs/{run_id}", None),
        ("POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "RUNNING"}}),
        ("POST", "/logs/", [{"message": "x" * 100_000}]),  # larger than one read
        ("DELETE", "/something", None),
    ]
    with counting_proxy(standin) as (proxy_url, counter):
        assert proxy_url != standin and proxy_url.endswith("/api")
        with httpx.Client(base_url=standin) as direct, httpx.Client(base_url=proxy_url) as proxied:
            for method, path, body in requests:
                want = direct.request(method, path, json=body)
                got = proxied.request(method, path, json=body)  # one kept-alive connection
                assert got.status_code == want.status_code
                if "echo" in want.json():  # the stand-in's echo of what reached it
                    assert got.json() == want.json()
                elif path == f"/flow_runs/{run_id}":  # the others make new ids
                    assert got.json()["id"] == run_id
    counts = counter.snapshot()
    assert counts.requests == {
        "DELETE /api/something": 1,
        "GET /api/flow_runs/{id}": 1,
        "POST /api/flow_runs/{id}/set_state": 1,
        "POST /api/flows/": 1,
        "POST /api/logs/": 1,
    }
    assert counts.errors == {} and counts.websockets == {} and counts.problems == []


def test_proxy_relays_a_compressed_websocket_and_counts_its_messages(standin: str) -> None:
    events = [json.dumps({"event": name, "id": str(uuid.uuid4())}) for name in TASK_RUN_EVENTS]
    with counting_proxy(standin) as (proxy_url, counter):
        ws_url = proxy_url.replace("http://", "ws://") + "/events/in"
        with connect(ws_url, subprotocols=["prefect"]) as websocket:  # type: ignore[list-item]
            # the server accepted compression: the proxy must decompress to read the messages
            extensions = websocket.response.headers.get("Sec-WebSocket-Extensions", "")
            assert extensions.startswith("permessage-deflate")
            assert websocket.subprotocol == "prefect"
            websocket.send(json.dumps({"type": "auth", "token": None}))
            assert json.loads(websocket.recv(timeout=10)) == {"type": "auth_success"}
            for event in events:
                websocket.send(event)
            websocket.ping().wait(10)  # the server has read all that came before
    counts = counter.snapshot()
    assert counts.websockets == {"/api/events/in": 1}
    assert counts.requests == {"GET /api/events/in": 1}
    assert counts.frames == {
        "/api/events/in close": 1,
        "/api/events/in ping": 1,
        "/api/events/in text": 4,
    }
    assert counts.messages == {"auth": 1, **dict.fromkeys(TASK_RUN_EVENTS, 1)}
    assert counts.problems == []


def test_proxy_counts_refusals_and_an_unreachable_server(standin: str) -> None:
    with counting_proxy(standin) as (proxy_url, counter):
        ws_url = proxy_url.replace("http://", "ws://") + "/events/out"
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url, open_timeout=10).close()
        assert refused.value.response.status_code == 403  # no such websocket route
    assert counter.snapshot().errors == {"GET /api/events/out 403": 1}
    assert counter.snapshot().websockets == {}

    nobody = f"http://{LOOPBACK}:{free_port()}/api"
    with counting_proxy(nobody) as (proxy_url, counter):
        assert httpx.get(f"{proxy_url}/health").status_code == 502
    counts = counter.snapshot()
    assert counts.errors == {"GET /api/health 502": 1}
    assert "the server did not answer" in counts.problems[0]


class _Http10(http.server.SimpleHTTPRequestHandler):
    """`python -m http.server`: files, answered in HTTP/1.0 (its connection closed after)."""

    def log_message(self, *args: Any) -> None:
        return None


def test_proxy_relays_an_http_1_0_servers_answers(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "health").write_text("true")
    handler = functools.partial(_Http10, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://{LOOPBACK}:{server.server_address[1]}/api"
        with counting_proxy(url) as (proxy_url, counter), httpx.Client() as client:
            assert client.get(f"{proxy_url}/health").text == "true"  # h11 would not send 1.0
            assert client.get(f"{proxy_url}/admin/version").status_code == 404
            counts = counter.snapshot()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert counts.errors == {"GET /api/admin/version 404": 1} and counts.problems == []


# -- the check -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_python_server_passes(
    prefect_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "conformance.json"
    argv = ["conformance", "--url", prefect_server.base_url, "--json", str(report_path)]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    report = ConformanceReport.model_validate_json(report_path.read_text())

    assert report.ok and [c.name for c in report.checks] == [
        "client",
        "flow run",
        "task runs",
        "events",
        "emulation",  # the flow-runs workload's flow run sent what the real client sent
    ]
    for c in report.checks:
        assert f"ok    {c.name}: {c.detail}" in out
    assert "conformance ok" in out
    assert report.client_version == "3.9.1" and report.tasks == DEFAULT_TASKS
    assert len(set(report.task_run_ids)) == DEFAULT_TASKS
    # the task runs are the server's own records of what the client made, read back
    task_runs = httpx.post(
        f"{prefect_server.base_url}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [report.flow_run_id]}}},
    ).json()
    assert {r["id"] for r in task_runs} == set(report.task_run_ids)

    traffic = report.traffic
    assert traffic.requests == PER_FLOW_RUN
    assert traffic.errors == {"GET /api/csrf-token 422": 2}
    assert traffic.websockets == {"/api/events/in": 1}
    # every task's 3 events over the one websocket, after the auth message; and the flow
    # run's first heartbeat (the engine sends one as it starts, then every 180 s)
    assert traffic.messages == {
        "auth": 1,
        "prefect.flow-run.heartbeat": 1,
        **dict.fromkeys(TASK_RUN_EVENTS, DEFAULT_TASKS),
    }
    assert traffic.frames["/api/events/in text"] == 3 * DEFAULT_TASKS + 2
    assert traffic.problems == []
    assert "POST /api/flow_runs/{id}/set_state" in out  # the counts table


@pytest.mark.slow
def test_a_cell_is_started_checked_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --url the cell's server is started for the check and everything it made is
    removed after: its folder, its process (the autouse fixture checks processes)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    report_path = tmp_path / "conformance.json"
    argv = ["conformance", "--server", "python", "--db", "sqlite", "--tasks", "2"]
    assert main([*argv, "--json", str(report_path)]) == EXIT_OK
    captured = capsys.readouterr()  # the server's start is progress: on stderr
    assert "starting the python server" in captured.err and "conformance ok" in captured.out
    report = ConformanceReport.model_validate_json(report_path.read_text())
    assert report.ok and len(report.task_run_ids) == 2
    assert list(tmp_path.glob(f"{ownership.FOLDER_PREFIX}*")) == []


def test_a_cell_that_cannot_run_here_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("BENCH_ZIG_BINARY", "BENCH_ZIG_SRC"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["conformance", "--server", "zig"]) == EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefect-bench: error: no zig prefect-server given") and "\n" not in err


@pytest.mark.slow
def test_standin_that_records_nothing_fails_with_a_clear_line(
    standin: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "conformance.json"
    argv = ["conformance", "--url", standin, "--tasks", "3", "--timeout", "3"]
    assert main([*argv, "--json", str(report_path)]) == EXIT_FAILED
    out = capsys.readouterr().out
    report = ConformanceReport.model_validate_json(report_path.read_text())
    flow_run = report.flow_run_id
    assert flow_run is not None and len(report.task_run_ids) == 3

    assert {c.name: c.ok for c in report.checks} == {
        "client": True,  # the real client ran its flow to the end
        "flow run": False,
        "task runs": False,
        "events": False,
        # the emulation holds the server to the answers Prefect gives (201 for a new run)
        "emulation": False,
    }
    assert "FAIL  emulation: the emulated 3.9.1 client's flow run: create flow_run: HTTP 200" in out
    assert (
        "FAIL  task runs: the server answered /health but recorded no task runs for flow run "
        f"{flow_run} within 3 s"
    ) in out
    assert (
        f"FAIL  flow run: the server answered /health but did not record flow run {flow_run} "
        "as COMPLETED (it is PENDING) within 3 s"
    ) in out
    assert f"recorded no events for flow run {flow_run} within 3 s" in out
    assert "conformance failed (4 of 5): the server answered /health but" in out
    # what the client sent is counted even when nothing was recorded
    assert report.traffic.requests["POST /api/flow_runs/{id}/set_state"] == 2
    assert report.traffic.messages["prefect.task-run.Completed"] == 3


@pytest.mark.parametrize("verbose", [False, True])
def test_server_not_answering_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verbose: bool
) -> None:
    url = f"http://{LOOPBACK}:{free_port()}/api"
    argv = ["conformance", "--url", url, "--json", str(tmp_path / "r.json")]
    assert main([*argv, *(["-v"] if verbose else [])]) == EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"prefect-bench: error: {url} does not answer: ConnectError(")
    # -v: the traceback before the line (the one it was raised from, httpx's, included)
    assert len(err) > 1 if verbose else len(err) == 1
    assert ("httpx.ConnectError" in "\n".join(err[:-1])) is verbose
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_a_server_that_is_not_prefect_fails_in_one_line_naming_its_answer(
    health_only: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], verbose: bool
) -> None:
    """/health answers and nothing else (as `python -m http.server` would): the real client
    cannot reach a Prefect API, and the last line says why, without its traceback."""
    report_path = tmp_path / "r.json"
    argv = ["conformance", "--url", health_only, "--json", str(report_path)]
    assert main([*argv, *(["-v"] if verbose else [])]) == EXIT_FAILED
    out = capsys.readouterr().out
    cause = (
        "the real Prefect client failed (exit code 1) before it could report: RuntimeError: "
        f"Failed to reach API at {health_only}/ (GET /api/admin/version answered 404)"
    )
    assert out.splitlines()[-1] == f"conformance failed (1 of 1): {cause}"
    assert f"FAIL  client: {cause}\n" in out
    assert ("Traceback (most recent call last)" in out) is verbose  # the client's, with -v
    [client] = ConformanceReport.model_validate_json(report_path.read_text()).checks
    assert client.detail == cause and "Traceback (most recent call last)" in client.details


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "https://127.0.0.1:4200/api"], "--url must be an http:// URL"),
        (["--url", "http://10.1.2.3:4200/api"], "--url must point to this machine"),
        (["--tasks", "0"], "--tasks: the flow needs at least 1 task, got 0"),
        (["--tasks", "-2"], "--tasks: the flow needs at least 1 task, got -2"),
        (["--tasks", "many"], "invalid int value: 'many'"),
        (["--timeout", "0"], "--timeout: seconds must be more than 0, got 0"),
        (["--timeout", "inf"], "--timeout: seconds must be more than 0, got inf"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["conformance", "--url", "http://127.0.0.1:4200/api", *args]
    assert _exit_code([*argv, "--json", str(tmp_path / "r.json")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def _exit_code(argv: list[str]) -> int | str | None:
    """main's exit code, also when argparse exits on its own (a value it cannot read)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_an_existing_report_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "r.json"
    report_path.write_text("kept")
    argv = ["conformance", "--url", "http://127.0.0.1:4200/api", "--json", str(report_path)]
    assert main(argv) == EXIT_USAGE
    assert "exists: reports are never overwritten" in capsys.readouterr().err
    assert report_path.read_text() == "kept"


def test_check_refuses_bad_input_before_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1 task"):
        check("http://127.0.0.1:1/api", tasks=0, workdir=tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_interrupt_stops_the_client_and_removes_its_folder(
    standin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folders = f"{ownership.FOLDER_PREFIX}conformance-*"

    def client_said_something() -> bool:
        return any(log.stat().st_size for log in tmp_path.glob(f"{folders}/client.log"))

    def interrupt_once_the_client_runs() -> None:
        # once it writes, not once its log exists: the log is opened before the client is
        # forked, and a signal landing in the fork's handlers is ignored (logging's at-fork
        # lock release swallowed the KeyboardInterrupt once in CI)
        wait_until(client_said_something, timeout_s=60, interval_s=0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # what main turns into Ctrl-C

    interrupter = threading.Thread(target=interrupt_once_the_client_runs, daemon=True)
    interrupter.start()
    try:
        assert main(["conformance", "--url", standin, "--tasks", "200"]) == EXIT_INTERRUPTED
    finally:
        interrupter.join(timeout=60)
    assert list(tmp_path.glob(folders)) == []  # and the client is gone: no_leftover_processes
