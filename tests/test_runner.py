"""run_cell end to end against the real Python Prefect server (short runs)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import psutil
import pytest
from hdrh.histogram import HdrHistogram
from rich.console import Console

from bench.process import wait_until
from bench.progress import Progress
from bench.results import Cell, EndpointResult, new_run_id
from bench.runner import INTERRUPTED, RunOptions, run_cell
from bench.servers import RunningServer

SEED_NAMES = [
    "health",
    "GET flow",
    "filter flows",
    "GET flow_run",
    "filter flow_runs",
    "create flow_run",
]


def options(tmp_path: Path, **changes: object) -> RunOptions:
    base: dict[str, object] = {
        "cell": Cell(server="python", db="sqlite", broker="memory"),
        "run_id": new_run_id(),
        "out_dir": tmp_path,
        "duration_s": 0.4,
        "warmup_s": 0.1,
        "concurrency": (1, 4),
    }
    return RunOptions(**(base | changes))  # type: ignore[arg-type]


class Recording(Progress):
    """Plain progress that remembers what it was told and may act after the n-th measurement."""

    def __init__(self, after: int | None = None, action: object = None) -> None:
        super().__init__(Console(file=open(os.devnull, "w")), "test")  # noqa: SIM115
        self.stages: list[str] = []
        self.done: list[EndpointResult] = []
        self.after, self.action = after, action

    def stage(self, text: str) -> None:
        self.stages.append(text)

    def measured(self, ep: EndpointResult) -> None:
        self.done.append(ep)
        if len(self.done) == self.after and callable(self.action):
            self.action()


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


def test_seed_cell_measures_every_endpoint_at_every_level(tmp_path: Path) -> None:
    progress = Recording()
    result = run_cell(options(tmp_path), progress)
    assert result.status == "ok", result.error
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
    assert len(progress.done) == 12


def test_server_dying_mid_cell_fails_the_cell_and_keeps_the_data(tmp_path: Path) -> None:
    def kill_server() -> None:
        server = cell_server()
        server.send_signal(signal.SIGKILL)
        # waitable but not reaped (WNOWAIT): the runner's Popen must still see the exit status
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        wait_until(lambda: os.waitid(os.P_PID, server.pid, flags) is not None, timeout_s=30)

    progress = Recording(after=2, action=kill_server)
    result = run_cell(options(tmp_path), progress)
    assert result.status == "failed"
    assert "exited with code -9" in (result.error or "")
    assert len(result.endpoints) == 2, result.error
    assert result.finished_at


def test_interrupt_writes_partial_failed_result(tmp_path: Path) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    result = run_cell(options(tmp_path), Recording(after=3, action=interrupt))
    assert result.status == "failed" and result.error == INTERRUPTED
    assert len(result.endpoints) == 3


def test_url_mode_measures_a_running_server(tmp_path: Path, prefect_server: RunningServer) -> None:
    opts = options(
        tmp_path,
        cell=Cell(server="external"),
        url=prefect_server.base_url,
        workload="health",
        concurrency=(2,),
    )
    result = run_cell(opts, Recording())
    assert result.status == "ok", result.error
    assert result.server is None
    assert [e.name for e in result.endpoints] == ["health"]
    assert_sane(result.endpoints[0])


def test_lifecycle_workload_writes_what_it_counts(
    tmp_path: Path, prefect_server: RunningServer
) -> None:
    opts = options(
        tmp_path,
        cell=Cell(server="external"),
        url=prefect_server.base_url,
        workload="lifecycle",
        concurrency=(1, 2),
    )
    result = run_cell(opts, Recording())
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


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:1/api", "does not answer"),
        ("http://192.0.2.1:4200/api", "must point to this machine"),
        ("ftp://127.0.0.1/api", "must be an http:// URL"),
    ],
)
def test_bad_urls_fail_clearly(tmp_path: Path, url: str, message: str) -> None:
    opts = options(tmp_path, cell=Cell(server="external"), url=url, workload="health")
    result = run_cell(opts, Recording())
    assert result.status == "failed"
    assert message in (result.error or "")


def test_zig_without_binary_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    result = run_cell(
        options(tmp_path, cell=Cell(server="zig", db="sqlite", broker="memory")), Recording()
    )
    assert result.status == "skipped"
    assert "--zig-binary" in (result.error or "")


def test_open_model_with_pinned_server_and_client(tmp_path: Path) -> None:
    seen: list[set[int]] = []

    def record_server_affinity() -> None:
        server = cell_server()
        seen.extend(os.sched_getaffinity(t.id) for t in server.threads())

    opts = options(
        tmp_path,
        rate=50.0,
        concurrency=(4,),
        duration_s=1.0,
        server_cpus=(0,),
        client_cpus=(1,),
    )
    result = run_cell(opts, Recording(after=1, action=record_server_affinity))
    assert result.status == "ok", result.error
    assert result.config.mode == "open" and result.config.rate == 50.0
    assert result.config.server_cpus == [0] and result.config.client_cpus == [1]
    assert seen and all(cpus == {0} for cpus in seen)
    health = result.endpoints[0]
    assert health.offered_rps == 50.0 and health.late_sends is not None
    assert 35 <= health.rps <= 60  # the engine holds the rate: it does not run flat out
