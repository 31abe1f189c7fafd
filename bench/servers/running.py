"""How any server under test is started, waited on and stopped; adapters only say what to run."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.errors import ServerError
from bench.ports import free_port
from bench.process import ManagedProcess, wait_until
from bench.services.base import PostgresService, RedisService

# Exit codes of a clean stop: 0, or killed by the SIGTERM we sent.
CLEAN_EXIT_CODES = (0, -15)
_PORT_ATTEMPTS = 3


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


@dataclass
class RunningServer:
    """A server answering on 127.0.0.1:port, until its context ends."""

    port: int
    api_path: str
    process: ManagedProcess
    startup_s: float
    exit_code: int | None = field(default=None, init=False)

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


class ServerAdapter(ABC):
    """Knows what to run for one server implementation and how to configure it.

    The runner calls, in this order: unavailable_reason(), prepare(logdir), version(), info(),
    then start_server(adapter, setup) (which calls command() and environment()).
    """

    name: str
    api_path: str = "/api"
    # absolute: http://127.0.0.1:PORT{health_path} answers 200 once the server is ready
    health_path: str = "/api/health"
    startup_timeout_s: float = 120.0

    def unavailable_reason(self) -> str | None:
        """None if this server can run here; else why not and what would make it run."""
        return None

    def prepare(self, logdir: Path) -> None:
        """Build what the server needs, once (later calls return at once); its log in `logdir`.

        ServerError, with the build log's tail, when the build fails.
        """
        return None

    @abstractmethod
    def version(self) -> str | None:
        """The version of the server that will run."""

    @abstractmethod
    def command(self, port: int, setup: ServerSetup) -> list[str]:
        """The argv that starts the server on 127.0.0.1:port."""

    @abstractmethod
    def environment(self, port: int, setup: ServerSetup) -> dict[str, str]:
        """The variables the server needs, on top of a clean copy of ours."""

    def info(self) -> dict[str, str | bool]:
        """Extra facts for the result's server block (e.g. a binary's sha256)."""
        return {}


def clean_environ() -> dict[str, str]:
    # Our own PREFECT_* settings (profiles, API URLs) must not leak into the server under test.
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def start_server(adapter: ServerAdapter, setup: ServerSetup) -> Iterator[RunningServer]:
    """Start the server on a free port, wait until healthy, and stop it (whole tree) on exit."""
    adapter.prepare(setup.logdir)  # a no-op when the runner has prepared it already
    setup.datadir.mkdir(parents=True, exist_ok=True)
    log_path = setup.logdir / "server.log"
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = free_port()
        env = clean_environ() | adapter.environment(port, setup)
        started = time.monotonic()
        try:
            process = ManagedProcess(
                adapter.command(port, setup), env=env, cwd=setup.datadir, log_path=log_path
            )
        except OSError as exc:
            raise ServerError(f"cannot start the {adapter.name} server: {exc}") from exc
        server = RunningServer(port, adapter.api_path, process, startup_s=0.0)
        try:
            health = f"http://127.0.0.1:{port}{adapter.health_path}"
            wait_until(
                lambda url=health: _healthy(url),
                timeout_s=adapter.startup_timeout_s,
                interval_s=0.1,
                abort=lambda p=process: None if p.exit_code() is None else "exited",
            )
        except (TimeoutError, RuntimeError) as exc:
            process.stop()
            tail = process.log_tail()
            if "address already in use" in tail.lower() and attempt < _PORT_ATTEMPTS:
                continue  # another program took the port between our choice and the bind
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
        server.startup_s = time.monotonic() - started
        try:
            yield server
        finally:
            server.exit_code = process.stop()
        return
