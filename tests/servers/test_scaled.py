"""python-scaled: Prefect as deployed at scale, API processes without services beside one
services process, on real PostgreSQL and Redis (the local provider: this is also the test of a
whole cell on that provider); the cells it cannot run; one of its processes dying mid-run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from bench.cells.runner import CellRun, run_cell
from bench.servers.registry import make_server
from bench.services.local import LocalProvider

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

MakeRun = Callable[..., CellRun]
MakeProgress = Callable[..., "RecordingProgress"]
SCALED = "python-scaled"


@pytest.mark.parametrize(
    ("db", "broker"), [("sqlite", "memory"), ("sqlite", "redis"), ("postgres", "memory")]
)
def test_the_cells_it_cannot_run_are_skipped_saying_why(
    cell_run: MakeRun, progress: MakeProgress, db: str, broker: str
) -> None:
    result = run_cell(cell_run(SCALED, db, broker), progress())
    assert result.status == "skipped", result.error
    assert result.error is not None
    assert "runs only on postgres with redis" in result.error, result.error
    assert f"not on {db} with {broker}" in result.error
    assert result.server is None  # skipped before anything was provisioned or started
    assert make_server(SCALED).cell_reason("postgres", "redis") is None


def _api_workers() -> list[psutil.Process]:
    """The API worker processes of the scaled server this test started: the processes that
    uvicorn spawned under our own descendant running `prefect server start --workers`."""
    for proc in psutil.Process().children(recursive=True):
        if "--workers" in proc.cmdline() and "start" in proc.cmdline():
            return [c for c in proc.children() if "spawn_main" in " ".join(c.cmdline())]
    return []


@pytest.mark.slow
@pytest.mark.skipif(
    any(LocalProvider.unavailable_reason(k) for k in ("postgres", "redis")),
    reason="no local PostgreSQL and Redis here",
)
def test_a_scaled_cell_runs_flows_across_its_processes_and_fails_when_one_dies(
    cell_run: MakeRun, progress: MakeProgress, tmp_path: Path
) -> None:
    """2 API processes and the services process: flow runs made through the API are recorded
    (task runs by the services process, through Redis). Then one API worker is killed after
    the first level: the cell fails before the next, naming it, the first level kept."""
    killed: list[int] = []

    def kill_one_worker() -> None:
        workers = _api_workers()
        assert len(workers) == 2, workers
        workers[0].kill()
        killed.append(workers[0].pid)

    run = cell_run(
        SCALED,
        "postgres",
        "redis",
        workload="flow-runs",
        provider="local",
        server_workers=2,
        concurrency=[2, 4],
        duration_s=1.0,
        warmup_s=0.3,
        tasks=2,
    )
    result = run_cell(run, progress(after=1, action=kill_one_worker))
    assert result.server is not None and result.server.processes == {
        "api_workers": 2,
        "services": 1,
    }
    (first,) = result.scenarios
    assert first.completed > 0 and not first.failed, first.problems
    assert {k: d.lost for k, d in first.delivery.items()} == {"flow_runs": 0, "task_runs": 0}
    assert first.server_cpu_cores is not None and first.server_cpu_cores > 0
    assert result.status == "failed" and killed, result.error
    assert result.error is not None
    assert f"API worker process {killed[0]} (one of 2) died" in result.error, result.error
    # found before the next level or during it, as soon as the process is gone
    assert "flow run, 2 tasks at c=4:" in result.error, result.error
    # the local provider ran a whole cell: both services, their versions, their logs
    assert {k: (i.provider, bool(i.version)) for k, i in result.services.items()} == {
        "postgres": ("local", True),
        "redis": ("local", True),
    }
    logs = {p.name for p in (tmp_path / result.run_id / result.cell.name).iterdir()}
    assert {"server.log", "services.log", "init.log", "postgres.log", "redis.log"} <= logs
