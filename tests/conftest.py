"""Shared fixtures: a real Prefect server, a check that tests leave no process behind, a
PostgreSQL and a Redis of the local provider per test module, and the runner's inputs (a quiet
progress, a cell run)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.console import Console

from bench import engine
from bench.cells.runner import EXTERNAL_SERVER, CellRun
from bench.cells.settings import run_config as run_config_of
from bench.core.ownership import Labels
from bench.observe.progress import Progress
from bench.results import Cell, EndpointResult, ScenarioResult, new_run_id
from bench.servers.adapter import ServerSetup
from bench.servers.registry import make_server
from bench.servers.running import SCHEMA_CACHE_ENV, RunningServer, start_server
from bench.services.base import PostgresService, RedisService
from bench.services.local import LocalProvider

# The helper modules' asserts report their values as the tests' own do.
pytest.register_assert_rewrite("tests.helpers", "tests.report.helpers")

# Every SQLite server of the tests (and of the tools they run) starts on a copy of the schema
# the first one migrated: Prefect's migrations are most of a start (bench.servers.running).
os.environ.setdefault(SCHEMA_CACHE_ENV, "1")


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must stop what it started: no child process may outlive it.

    The engine keeps its worker processes between measurements; they are stopped here too.
    """
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    engine.shutdown()
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, f"processes left running: {[(p.pid, p.name()) for p in alive]}"


def _shared_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, no_services: bool = False
) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp(name)
    setup = ServerSetup(
        db="sqlite", broker="memory", logdir=tmp, datadir=tmp / "data", no_services=no_services
    )
    with start_server(make_server("python"), setup) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real Python Prefect server (sqlite, memory broker) shared by the tests that read."""
    yield from _shared_server(tmp_path_factory, "prefect-server")


@pytest.fixture(scope="session")
def prefect_api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real Python Prefect server without its services (--no-services): it takes events and
    task-run events but records none, shared by the tests of a server that records nothing."""
    yield from _shared_server(tmp_path_factory, "prefect-api-only", no_services=True)


def _module_labels(request: pytest.FixtureRequest, what: str) -> Labels:
    return Labels(request.module.__name__.rpartition(".")[2], what)


@pytest.fixture(scope="module")
def postgres(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PostgresService]:
    """A PostgreSQL of the local provider shared by one test module (skipped, saying why, on a
    machine without its binaries)."""
    if reason := LocalProvider.unavailable_reason("postgres"):
        pytest.skip(f"local postgres: {reason}")
    with LocalProvider().postgres(
        tmp_path_factory.mktemp("pg"), _module_labels(request, "pg")
    ) as pg:
        yield pg


@pytest.fixture(scope="module")
def redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisService]:
    """A Redis of the local provider shared by one test module (skipped, saying why, on a
    machine without redis-server)."""
    if reason := LocalProvider.unavailable_reason("redis"):
        pytest.skip(f"local redis: {reason}")
    with LocalProvider().redis(tmp_path_factory.mktemp("redis"), _module_labels(request, "r")) as r:
        yield r


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


class RecordingProgress(Progress):
    """Progress that prints nothing, remembers what it was told, and may act (e.g. kill the
    server, or raise KeyboardInterrupt) after the `after`-th measurement."""

    def __init__(self, after: int | None = None, action: Callable[[], None] | None = None) -> None:
        super().__init__(Console(file=open(os.devnull, "w")), "test")  # noqa: SIM115
        self.stages: list[str] = []
        self.done: list[EndpointResult | ScenarioResult] = []
        self.after, self.action = after, action

    def stage(self, text: str) -> None:
        self.stages.append(text)

    def measured(self, ep: EndpointResult) -> None:
        self._done(ep)

    def measured_scenario(self, measured: ScenarioResult) -> None:
        self._done(measured)

    def _done(self, measured: EndpointResult | ScenarioResult) -> None:
        self.done.append(measured)
        if len(self.done) == self.after and self.action is not None:
            self.action()


@pytest.fixture
def progress() -> Callable[..., RecordingProgress]:
    """Makes quiet progress views: `progress()`, or `progress(after=2, action=kill)`."""
    return RecordingProgress


@pytest.fixture
def cell_run(tmp_path: Path) -> Callable[..., CellRun]:
    """Makes what the CLI hands the runner: `cell_run("zig", "postgres", "redis",
    server_options={"binary": path}, duration_s=0.3)`; with `url=...`, the external cell.
    Results go to tmp_path."""

    def make(
        server: str = "python",
        db: str = "sqlite",
        broker: str = "memory",
        *,
        server_options: dict[str, Any] | None = None,
        servers_file: Path | None = None,
        **config: Any,
    ) -> CellRun:
        run_config = run_config_of(config)
        if run_config.url:
            return CellRun(Cell(server=EXTERNAL_SERVER), new_run_id(), tmp_path, run_config, None)
        adapter = make_server(server, server_options, servers_file)
        cell = Cell(server=server, db=db, broker=broker)
        return CellRun(cell, new_run_id(), tmp_path, run_config, adapter)

    return make


@pytest.fixture
def health_only() -> Iterator[str]:
    """The API URL of a stand-in that answers GET /api/health only, on a free port."""
    from tests.helpers import HealthOnly, stand_in  # after the helpers' asserts are rewritten

    with stand_in(HealthOnly) as url:
        yield url
