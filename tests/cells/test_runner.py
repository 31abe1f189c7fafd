"""run_cell end to end against the real Python Prefect server (short runs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest
from hdrh.histogram import HdrHistogram

from bench.cells.runner import INTERRUPTED, CellRun, _drained, run_cell
from bench.config.run import RunConfig
from bench.core.process import wait_until
from bench.engine import Scenario
from bench.results import EndpointResult
from bench.servers.running import RunningServer
from bench.workloads.flow_runs import FLOW_RUNS
from bench.workloads.flow_runs import scenario as flow_runs_scenario

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

pytestmark = pytest.mark.slow

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]

SEED_NAMES = [
    "health",
    "GET flow",
    "filter flows",
    "GET flow_run",
    "filter flow_runs",
    "create flow_run",
]


# Short windows: these tests check what a run does, not how fast the server is.
SHORT = {"duration_s": 0.6, "warmup_s": 0.1, "concurrency": [1, 4]}


def cell_server() -> psutil.Process:
    """The server run_cell started (it runs in the cell's temporary folder), not the shared one."""
    (server,) = [
        p
        for p in psutil.Process().children()
        if Path(p.cwd()).name.startswith("prefect-bench-python-")
    ]
    return server


def assert_sane(ep: EndpointResult) -> None:
    assert ep.requests > 0 and ep.rps > 0, ep
    lat = ep.latency_ms
    assert lat is not None
    assert lat.min <= lat.p50 <= lat.p90 <= lat.p99 <= lat.p999 <= lat.max
    assert ep.hdr is not None
    decoded = HdrHistogram.decode(ep.hdr)
    assert decoded.get_total_count() == ep.requests - sum(ep.errors.values())


def test_seed_cell_measures_every_endpoint_at_every_level(
    tmp_path: Path, cell_run: MakeRun, progress: MakeProgress
) -> None:
    """The default cell, with the server and the load generator pinned apart."""
    seen: list[set[int]] = []

    def record_server_affinity() -> None:
        server = cell_server()
        seen.extend(os.sched_getaffinity(t.id) for t in server.threads())

    view = progress(after=1, action=record_server_affinity)
    result = run_cell(cell_run(**SHORT, server_cpus=[0], client_cpus=[1]), view)
    assert result.status == "ok", result.error
    assert result.config.server_cpus == [0] and result.config.client_cpus == [1]
    assert seen and all(cpus == {0} for cpus in seen)
    assert [(e.name, e.concurrency) for e in result.endpoints] == [
        (name, c) for name in SEED_NAMES for c in (1, 4)
    ]
    for ep in result.endpoints:
        assert_sane(ep)
        assert ep.server_cpu_cores is not None and 0 < ep.server_cpu_cores <= 2.5
    server = result.server
    assert server is not None and server.name == "python" and server.version
    assert server.startup_s and server.startup_s > 0
    assert server.rss_idle_mb and server.rss_peak_mb and server.rss_peak_mb >= 50
    assert server.cpu_s and server.cpu_s > 0
    assert result.finished_at and result.environment.cpu_count >= 1
    assert (tmp_path / result.run_id / "python-sqlite-memory" / "server.log").exists()
    assert len(view.done) == 12


def test_server_dying_mid_cell_fails_the_cell_and_keeps_the_data(
    cell_run: MakeRun, progress: MakeProgress
) -> None:
    def kill_server() -> None:
        server = cell_server()
        server.send_signal(signal.SIGKILL)
        # waitable but not reaped (WNOWAIT): the runner's Popen must still see the exit status
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        wait_until(lambda: os.waitid(os.P_PID, server.pid, flags) is not None, timeout_s=30)

    result = run_cell(cell_run(**SHORT), progress(after=2, action=kill_server))
    assert result.status == "failed"
    # the signal is the cause, not the log's last line (the dashboard notice, as it happens)
    assert "was killed by SIGKILL (log: " in (result.error or ""), result.error
    assert len(result.endpoints) == 2, result.error
    assert result.finished_at


def test_interrupt_writes_partial_failed_result(
    prefect_server: RunningServer, cell_run: MakeRun, progress: MakeProgress
) -> None:
    """What was measured before Ctrl-C is kept (that Ctrl-C stops our server is
    test_cli's test_interrupt_stops_the_server_and_writes_a_partial_result)."""

    def interrupt() -> None:
        raise KeyboardInterrupt

    run = cell_run(**SHORT, url=prefect_server.base_url, workload="seed")
    result = run_cell(run, progress(after=3, action=interrupt))
    assert result.status == "failed" and result.error == INTERRUPTED
    assert len(result.endpoints) == 3


def test_url_mode_measures_a_running_server(
    prefect_server: RunningServer, cell_run: MakeRun, progress: MakeProgress
) -> None:
    run = cell_run(**SHORT | {"concurrency": [2]}, url=prefect_server.base_url)
    assert run.config.workload == "health"  # the default with a URL
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    assert result.server is None
    assert [e.name for e in result.endpoints] == ["health"]
    assert_sane(result.endpoints[0])


def test_lifecycle_workload_writes_what_it_counts(
    prefect_server: RunningServer, cell_run: MakeRun, progress: MakeProgress
) -> None:
    run = cell_run(
        **SHORT | {"concurrency": [1, 2]}, url=prefect_server.base_url, workload="lifecycle"
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    assert [(e.name, e.concurrency) for e in result.endpoints] == [
        (name, c)
        for name in ("create task_run", "set flow_run state", "write 10 logs", "poll work pool")
        for c in (1, 2)
    ]
    for ep in result.endpoints:
        # SQLite may refuse a concurrent write (503, then the server drops the connection)
        assert set(ep.errors) <= {"503", "disconnect"}, ep.problems
        assert ep.rps > 0, ep
    created = sum(
        e.requests - sum(e.errors.values()) for e in result.endpoints if e.name == "create task_run"
    )
    with httpx.Client(base_url=prefect_server.base_url) as client:
        count = client.post("/task_runs/count", json={}).json()
    assert count >= created + 1  # + the one verification made; warmups made more


def test_url_not_answering_fails_clearly(cell_run: MakeRun, progress: MakeProgress) -> None:
    result = run_cell(cell_run(url="http://127.0.0.1:1/api", **SHORT), progress())
    assert result.status == "failed"
    assert "does not answer" in (result.error or "")


def test_zig_without_binary_is_skipped(
    monkeypatch: pytest.MonkeyPatch, cell_run: MakeRun, progress: MakeProgress
) -> None:
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    monkeypatch.delenv("BENCH_ZIG_SRC", raising=False)
    result = run_cell(cell_run("zig", **SHORT), progress())
    assert result.status == "skipped"
    assert "--zig-binary" in (result.error or "")


def test_a_cell_that_cannot_run_is_skipped_before_provisioning(
    tmp_path: Path, cell_run: MakeRun, progress: MakeProgress
) -> None:
    """A server that does not say how to run without its services, told --no-services, on
    postgres × redis: skipped saying why, and no service was provisioned for it."""
    servers = tmp_path / "servers.toml"
    servers.write_text('[servers.plain]\ncommand = ["{python}", "-c", "pass"]\n')
    view = progress()
    run = cell_run("plain", "postgres", "redis", servers_file=servers, no_services=True, **SHORT)
    result = run_cell(run, view)
    assert result.status == "skipped"
    assert "does not say how to run without its services" in (result.error or "")
    assert not result.services and result.server is None
    assert not any("provisioning" in stage for stage in view.stages), view.stages


def _holding_a_server_folder() -> tuple[subprocess.Popen[str], Path]:
    """A child process standing for a run: it makes a server folder as the runner does, then
    waits; (the child, its folder)."""
    code = (
        "import time; from bench.core import ownership; "
        "from bench.cells.runner import _server_folder; "
        "held = _server_folder(ownership.Labels('other', 'python-sqlite-memory')); "
        "print(held.__enter__(), flush=True); time.sleep(600)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    folder = Path(child.stdout.readline().strip())
    assert (folder / "owner.json").is_file()
    return child, folder


def test_a_killed_runs_server_folder_is_removed_by_the_next_run(
    cell_run: MakeRun, progress: MakeProgress
) -> None:
    """SIGKILL leaves a server's data folder behind (no cleanup runs); the next cell's start
    removes it, since its owner is gone, and leaves a live run's folder alone."""
    killed, left = _holding_a_server_folder()
    killed.kill()
    killed.wait()
    live, kept = _holding_a_server_folder()
    try:
        view = progress()
        result = run_cell(cell_run(**SHORT | {"concurrency": [1]}, workload="health"), view)
        assert result.status == "ok", result.error
        assert not left.exists()
        assert any(str(left) in stage for stage in view.stages), view.stages
        assert kept.exists()
    finally:
        live.kill()
        live.wait()
        shutil.rmtree(kept, ignore_errors=True)
        shutil.rmtree(left, ignore_errors=True)


def test_open_model_holds_the_rate(
    prefect_server: RunningServer, cell_run: MakeRun, progress: MakeProgress
) -> None:
    run = cell_run(
        **SHORT | {"concurrency": [4], "duration_s": 1.0}, url=prefect_server.base_url, rate=50.0
    )
    result = run_cell(run, progress())
    assert result.status == "ok", result.error
    assert result.config.mode == "open" and result.config.rate == 50.0
    health = result.endpoints[0]
    assert health.offered_rps == 50.0 and health.late_sends is not None
    assert 35 <= health.rps <= 60  # the engine holds the rate: it does not run flat out


def test_a_count_that_times_out_under_a_backlog_is_asked_again() -> None:
    """The server answers the read-back late while it writes a backlog (seen: Prefect 3.4.25
    on SQLite, over 30 s for a count): the drain asks again instead of failing the cell. The
    workload's `recorded` stands in for that server: it times out once, then answers."""
    counts = {"flow_runs": 3, "task_runs": 30}
    replies: list[Exception | dict[str, int]] = [httpx.ReadTimeout("timed out"), counts]

    def recorded(client: httpx.Client, measured: Scenario) -> dict[str, int]:
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    workload = replace(FLOW_RUNS, recorded=recorded)
    with httpx.Client() as client:
        found = _drained(workload, flow_runs_scenario(RunConfig(tasks=10), "late"), client, counts)
    assert found == counts and replies == [counts]  # the timeout was met, and asked again
