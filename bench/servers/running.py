"""Starting any server under test, waiting until it is healthy, and stopping it; what to run
comes from its adapter (bench.servers.adapter)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.core.cache_folder import default_cache_dir
from bench.core.errors import ServerError
from bench.core.failures import exited, from_log
from bench.core.ports import PortTaken, lost_port_race, on_free_port
from bench.core.process import ManagedProcess, wait_until
from bench.servers.adapter import ServerAdapter, ServerSetup, clean_environ, run_logged


@dataclass
class RunningServer:
    """A server answering on 127.0.0.1:port, until its context ends."""

    port: int
    api_path: str
    process: ManagedProcess
    startup_s: float
    exit_code: int | None = field(default=None, init=False)
    # started on a copy of its migrated schema (BENCH_SCHEMA_CACHE): startup_s leaves it out
    schema_cached: bool = field(default=False, init=False)
    # the process beside it that runs its services (a spec's services_command)
    services: ManagedProcess | None = field(default=None, init=False)
    # its API worker processes, when it runs several ({server_workers}): each must live
    workers: list[psutil.Process] = field(default_factory=list, init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.api_path}"

    def processes(self) -> list[ManagedProcess]:
        """The processes we started: the server, and its services process if it has one."""
        return [self.process] + ([self.services] if self.services else [])

    def tree(self) -> list[psutil.Process]:
        """Every live process of the deployment, for CPU and memory: each one's tree."""
        return [p for started in self.processes() for p in started.tree()]

    def pin(self, cpus: list[int]) -> None:
        """Pin every process of the deployment to `cpus`."""
        for started in self.processes():
            started.pin(cpus)

    def check_alive(self) -> None:
        """Raise ServerError, saying which process, if one of the deployment's has exited."""
        for what, started in (("the server", self.process), ("its services", self.services)):
            if started is not None and (code := started.exit_code()) is not None:
                said = f"{what} ({' '.join(started.argv[:6])} …) {exited(code)}"
                # killed: the signal is the cause, not the last line the log happened to hold
                log, cause = started.log_tail(), "" if code < 0 else None
                raise from_log(ServerError, said, log, started.log_path, cause)
        for worker in self.workers:
            if not _lives(worker):
                n, log = len(self.workers), self.process.log_path
                said = f"the server's API worker process {worker.pid} (one of {n}) died"
                raise from_log(ServerError, said, self.process.log_tail(), log)


def _lives(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _startup_timeout(adapter: ServerAdapter, setup: ServerSetup) -> float:
    """How long the server may take to start: the setup's (a server under callgrind), else
    its spec's."""
    return setup.startup_timeout_s or adapter.startup_timeout_s


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _start_on(port: int, adapter: ServerAdapter, setup: ServerSetup) -> RunningServer:
    """Start the server on `port` and wait until it is healthy; PortTaken if it lost the port."""
    log_path = setup.logdir / "server.log"
    env = clean_environ() | adapter.environment(port, setup)
    started = time.monotonic()
    try:
        process = ManagedProcess(
            adapter.command(port, setup), env=env, cwd=setup.datadir, log_path=log_path
        )
    except OSError as exc:
        raise ServerError(f"cannot start the {adapter.name} server: {exc}") from exc
    # its services start beside it (the schema is ready: they need nothing of the API)
    try:
        services = _launch_services(adapter, port, setup, env)
    except BaseException:
        process.stop()
        raise
    started_here = [process] + ([services] if services else [])
    health = f"http://127.0.0.1:{port}{adapter.health_path}"
    try:
        wait_until(
            lambda: _healthy(health),
            timeout_s=_startup_timeout(adapter, setup),
            interval_s=0.1,
            abort=lambda: None if process.exit_code() is None else "exited",
        )
    except (TimeoutError, RuntimeError) as exc:
        for proc in started_here:
            proc.stop()
        tail = process.log_tail()
        if lost_port_race(tail):
            raise PortTaken(f"port {port}") from None
        what = (
            f"did not answer {health} within {_startup_timeout(adapter, setup):g} s"
            if isinstance(exc, TimeoutError)
            else f"exited with code {process.exit_code()} before answering"
        )
        raise from_log(ServerError, f"the {adapter.name} server {what}", tail, log_path) from exc
    except BaseException:
        for proc in started_here:
            proc.stop()
        raise
    server = RunningServer(port, adapter.api_path, process, time.monotonic() - started)
    server.services = services
    try:
        if adapter.spec.uses("server_workers") and setup.server_workers > 1:
            server.workers = _await_workers(
                adapter, process, port, setup.server_workers, _startup_timeout(adapter, setup)
            )
        if services is not None:
            _await_services(adapter, services, _startup_timeout(adapter, setup))
    except BaseException:
        for proc in started_here:
            proc.stop()
        raise
    server.startup_s = time.monotonic() - started
    return server


def _run_init(adapter: ServerAdapter, setup: ServerSetup) -> float:
    """Run the server's init command, if any, to completion in its environment (its output in
    the cell's init.log); how long it took. ServerError with the log's tail if it fails."""
    argv = adapter.init_command(setup)
    if argv is None:
        return 0.0
    started = time.monotonic()
    run_logged(
        argv,
        cwd=setup.datadir,
        log_path=setup.logdir / "init.log",
        timeout_s=_startup_timeout(adapter, setup),
        what=f"the {adapter.name} server's init command",
        env=clean_environ() | adapter.environment(0, setup),
    )
    return time.monotonic() - started


def _await_workers(
    adapter: ServerAdapter, process: ManagedProcess, port: int, count: int, timeout_s: float
) -> list[psutil.Process]:
    """The server's `count` API worker processes, once all are up within `timeout_s` (health
    answered as soon as the first one was): the processes under it that listen on its port
    (not, say, Python's multiprocessing resource tracker)."""

    def workers() -> list[psutil.Process] | None:
        found = [p for p in process.tree()[1:] if _listens(p, port)]
        return found if len(found) >= count else None

    try:
        return wait_until(
            workers,
            timeout_s=timeout_s,
            interval_s=0.1,
            abort=lambda: None if process.exit_code() is None else "exited",
        )
    except (TimeoutError, RuntimeError) as exc:
        tail = process.log_tail()
        said = (
            f"the {adapter.name} server did not run its {count} API worker processes within "
            f"{timeout_s:g} s"
        )
        raise from_log(ServerError, said, tail, process.log_path) from exc


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


def _launch_services(
    adapter: ServerAdapter, port: int, setup: ServerSetup, env: dict[str, str]
) -> ManagedProcess | None:
    """The services process, started (not yet ready), when the server has one."""
    argv = adapter.services_command(port, setup)
    if argv is None:
        return None
    try:
        return ManagedProcess(
            argv, env=env, cwd=setup.datadir, log_path=setup.logdir / "services.log"
        )
    except OSError as exc:
        raise ServerError(f"cannot start the {adapter.name} server's services: {exc}") from exc


def _written_since_start(process: ManagedProcess) -> str:
    """What `process` wrote to its log (appended to: an earlier attempt's lines come first)."""
    try:
        with open(process.log_path, "rb") as log:
            log.seek(process.log_start)
            return log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _await_services(adapter: ServerAdapter, services: ManagedProcess, timeout_s: float) -> None:
    """Return once the services process says it has started them (SERVICES_STARTED);
    ServerError with its log's tail if it exits or does not within `timeout_s`."""
    try:
        wait_until(
            lambda: SERVICES_STARTED in _written_since_start(services),
            timeout_s=timeout_s,
            interval_s=0.1,
            abort=lambda: None if services.exit_code() is None else "exited",
        )
    except (TimeoutError, RuntimeError) as exc:
        what = (
            f"did not say {SERVICES_STARTED!r} within {timeout_s:g} s"
            if isinstance(exc, TimeoutError)
            else f"exited with code {services.exit_code()}"
        )
        tail = services.log_tail()
        said = f"the {adapter.name} server's services {what}"
        raise from_log(ServerError, said, tail, services.log_path) from exc


# What `prefect server services start` prints once it runs them (prefect/cli/server.py).
SERVICES_STARTED = "Starting services"

# Set (the tests set it), a SQLite server starts on a copy of the database it migrated the
# first time, kept per server and version: Prefect's migrations are most of its start. Its
# startup_s then leaves them out (RunningServer.schema_cached says so).
SCHEMA_CACHE_ENV = "BENCH_SCHEMA_CACHE"


def _schema_copy(adapter: ServerAdapter, setup: ServerSetup) -> Path | None:
    """Where this server's migrated empty SQLite database is kept, when BENCH_SCHEMA_CACHE is
    set and the server starts on a fresh SQLite file; None otherwise."""
    if not os.environ.get(SCHEMA_CACHE_ENV) or setup.db != "sqlite" or setup.sqlite_path.exists():
        return None
    version = adapter.version() or importlib.metadata.version("prefect")
    return default_cache_dir() / "schema" / f"{adapter.name}-{version}.db"


def _keep_schema(database: Path, into: Path) -> None:
    """A consistent copy of the just-migrated database, written whole or not at all."""
    into.parent.mkdir(parents=True, exist_ok=True)
    partial = into.with_name(f".{into.name}.{os.getpid()}")
    snapshot_sqlite(database, partial)
    os.replace(partial, into)


@contextmanager
def start_server(adapter: ServerAdapter, setup: ServerSetup) -> Iterator[RunningServer]:
    """Start the server on a free port, wait until healthy, and stop it (whole tree) on exit."""
    adapter.prepare(setup.logdir)  # a no-op when the runner has prepared it already
    setup.datadir.mkdir(parents=True, exist_ok=True)
    schema = _schema_copy(adapter, setup)
    cached = schema is not None and schema.exists()
    if cached:
        assert schema is not None
        shutil.copyfile(schema, setup.sqlite_path)
    init_s = _run_init(adapter, setup)
    server = on_free_port(
        lambda port: _start_on(port, adapter, setup),
        f"the {adapter.name} server",
        ServerError,
        attempts=3,
    )
    server.schema_cached = cached
    server.startup_s += init_s
    if schema is not None and not cached:
        _keep_schema(setup.sqlite_path, schema)
    try:
        yield server
    finally:
        if server.services is not None:
            server.services.stop()
        server.exit_code = server.process.stop()


def snapshot_sqlite(database: Path, into: Path) -> None:
    """A consistent copy of a SQLite database (its WAL included) through SQLite's backup."""
    with (
        contextlib.closing(sqlite3.connect(database)) as src,
        contextlib.closing(sqlite3.connect(into)) as dst,
    ):
        src.backup(dst)
