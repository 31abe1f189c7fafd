"""Starting any server under test, waiting until it is healthy, and stopping it; what to run
comes from its adapter (bench.servers.adapter)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.cache import default_cache_dir
from bench.errors import ServerError
from bench.ports import PortTaken, lost_port_race, on_free_port
from bench.preload.cache import snapshot_sqlite
from bench.process import ManagedProcess, wait_until
from bench.servers.adapter import ServerAdapter, clean_environ
from bench.services.base import PostgresService, RedisService


@dataclass(frozen=True)
class ServerSetup:
    """Everything an adapter needs to describe one server start."""

    db: str
    broker: str
    logdir: Path
    datadir: Path
    postgres: PostgresService | None = None
    redis: RedisService | None = None
    no_services: bool = False
    # started to seed a --preload, with the spec's [env.seeding] (not measured)
    seeding: bool = False

    @property
    def sqlite_path(self) -> Path:
        """Where a sqlite cell's database is (the server's own folder)."""
        return self.datadir / "prefect.db"


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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.api_path}"

    def check_alive(self) -> None:
        """Raise ServerError if the server has exited."""
        code = self.process.exit_code()
        if code is not None:
            raise ServerError(
                f"the server exited with code {code}; last lines of "
                f"{self.process.log_path}:\n{self.process.log_tail()}"
            )


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
    health = f"http://127.0.0.1:{port}{adapter.health_path}"
    try:
        wait_until(
            lambda: _healthy(health),
            timeout_s=adapter.startup_timeout_s,
            interval_s=0.1,
            abort=lambda: None if process.exit_code() is None else "exited",
        )
    except (TimeoutError, RuntimeError) as exc:
        process.stop()
        tail = process.log_tail()
        if lost_port_race(tail):
            raise PortTaken(f"port {port}") from None
        what = (
            f"did not answer {health} within {adapter.startup_timeout_s:g} s"
            if isinstance(exc, TimeoutError)
            else f"exited with code {process.exit_code()} before answering"
        )
        raise ServerError(
            f"the {adapter.name} server {what}; last lines of {log_path}:\n{tail}"
        ) from exc
    except BaseException:
        process.stop()
        raise
    return RunningServer(port, adapter.api_path, process, time.monotonic() - started)


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
    server = on_free_port(
        lambda port: _start_on(port, adapter, setup),
        f"the {adapter.name} server",
        ServerError,
        attempts=3,
    )
    server.schema_cached = cached
    if schema is not None and not cached:
        _keep_schema(setup.sqlite_path, schema)
    try:
        yield server
    finally:
        server.exit_code = server.process.stop()
