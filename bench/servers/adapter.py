"""The adapter of every server under test: it runs a ServerSpec (bench.servers.specs), the data
that says what to run and with which settings per db and broker.

A servers.toml server is this class alone; the built-in python and zig servers subclass it
for what data cannot say (an installed package's version; where a binary comes from). An
adapter may declare command-line options of its own (`options`): the CLI offers them and hands
their values to that adapter only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field

from bench.config.dimensions import DBS
from bench.config.run import Options, setting
from bench.core.errors import ConfigError, ServerError
from bench.core.failures import from_log
from bench.core.ports import LOOPBACK
from bench.core.process import ManagedProcess, wait_until
from bench.servers.specs import (
    COST_SECTION,
    NO_SERVICES_SECTION,
    SEEDING_SECTION,
    ServerSpec,
    render,
)
from bench.services.base import PostgresService, RedisService

VERSION_TIMEOUT_S = 30.0


class ServerSettings(Options):
    """The settings a server adds to the run, for any spec that uses them (builtin.toml's
    python-scaled, or a servers.toml server): stored in the result's config."""

    server_workers: Annotated[int, Field(ge=1)] = setting(
        "--server-workers",
        "N",
        default=2,
        description="python-scaled: its API processes (prefect server start --workers N), "
        "beside its one services process",
    )


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
    # {server_workers}: the API processes of a server that runs several (python-scaled)
    server_workers: int = 2
    # --cost: the server runs under `wrap` (callgrind: bench.cost), with the spec's [env.cost]
    cost: bool = False
    wrap: tuple[str, ...] = ()
    # how long it may take to start, when not the spec's (callgrind starts it ~10x slower)
    startup_timeout_s: float | None = None

    @property
    def sqlite_path(self) -> Path:
        """Where a sqlite cell's database is (the server's own folder)."""
        return self.datadir / "prefect.db"


@dataclass(frozen=True)
class ServerOption:
    """A command-line option of one server adapter (e.g. zig's --zig-binary).

    Its value reaches the adapter's constructor as the keyword `dest`; `env` names the
    environment variable the adapter reads when the option is not given.
    """

    flag: str
    dest: str
    help: str
    metavar: str = "PATH"
    env: str | None = None


def clean_environ() -> dict[str, str]:
    """Our environment without PREFECT_* variables: our own settings (profiles, API URLs)
    must not leak into the server under test or its build."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def executable_problem(binary: Path, what: str) -> str | None:
    """Why `binary` cannot be run, or None."""
    if not binary.exists():
        return f"{what} {binary} does not exist"
    if not binary.is_file():
        return f"{what} {binary} is not a file"
    if not os.access(binary, os.X_OK):
        return f"{what} {binary} is not executable (chmod +x it)"
    return None


def run_logged(
    argv: list[str],
    *,
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    what: str,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run a build step (or a server's init command) to completion, its output appended to
    `log_path`, in `env` (default: `clean_environ()`).

    ServerError naming the cause the log gives (its tail the error's `details`) if it cannot
    start, fails or outlasts `timeout_s`; the step (its whole process tree) is stopped on any
    exception, Ctrl-C included.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ cd {cwd} && {' '.join(argv)}\n")
    try:
        proc = ManagedProcess(
            argv, env=clean_environ() if env is None else env, cwd=cwd, log_path=log_path
        )
    except OSError as exc:
        raise ServerError(f"{what} could not start ({argv[0]}): {exc}") from exc
    try:
        wait_until(lambda: proc.exit_code() is not None, timeout_s=timeout_s, interval_s=0.1)
    except TimeoutError:
        proc.stop()
        said = f"{what} did not finish within {timeout_s:g} s"
        raise from_log(ServerError, said, proc.log_tail(), log_path) from None
    except BaseException:
        proc.stop()
        raise
    if (code := proc.exit_code()) != 0:
        raise from_log(
            ServerError, f"{what} failed with exit code {code}", proc.log_tail(), log_path
        )


class ServerAdapter:
    """Runs a ServerSpec: renders its command and environment for a cell, builds it if asked.

    The runner calls, in this order: unavailable_reason(no_services), cell_reason(db, broker),
    prepare(logdir), version(), info(), then bench.servers.running.start_server(adapter,
    setup), which calls init_command(), command(), environment() and services_command().
    """

    # Options of this server's own; their values are the constructor's keyword arguments.
    options: ClassVar[tuple[ServerOption, ...]] = ()
    # Settings it adds to the run, stored in the result's config (bench.config.run.Options).
    settings: ClassVar[type[Options]] = ServerSettings

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.api_path = spec.api_path
        self.health_path = spec.health_path
        self.startup_timeout_s = spec.startup_timeout_s
        self._prepared = False

    # -- what the subclasses refine ---------------------------------------------------------

    @property
    def binary(self) -> Path | None:
        """{binary}: the executable the server runs, if it names one."""
        return self.spec.binary

    def unavailable_reason(self, no_services: bool = False) -> str | None:
        """None if this server can run here (without its services, if asked); else why not
        and what would make it run."""
        if no_services and (reason := self._no_services_problem()):
            return reason
        if self.binary is not None and self.spec.build is None:
            # with a build step, the binary may only exist once prepare() has run
            return executable_problem(self.binary, f"the {self.name} server's binary")
        if self.binary is None and self.spec.uses("binary"):
            return f"the {self.name} server uses {{binary}} but names none ({self._where()})"
        return None

    def cell_reason(self, db: str, broker: str) -> str | None:
        """None if the server runs in a `db`, `broker` cell; else why it is skipped."""
        if db in self.spec.dbs and broker in self.spec.brokers:
            return None
        runs = f"{' or '.join(self.spec.dbs)} with {' or '.join(self.spec.brokers)}"
        what = f" ({self.spec.description})" if self.spec.description else ""
        return f"the {self.name} server runs only on {runs}{what}, not on {db} with {broker}"

    def prepare(self, logdir: Path) -> None:
        """Build what the server needs, once (later calls return at once); its log in `logdir`.

        ServerError, with the build log's tail, when the build fails.
        """
        if self._prepared:
            return
        build = self.spec.build
        if build is not None:
            argv = [self._outside(a, "build command") for a in build.command]
            run_logged(
                argv,
                cwd=build.cwd,
                log_path=logdir / "build.log",
                timeout_s=build.timeout_s,
                what=f"the {self.name} server's build ({self._where()})",
            )
            if self.binary is not None and (
                problem := executable_problem(self.binary, "after the build, the binary")
            ):
                raise ServerError(f"{problem} ({self._where()})")
        self._prepared = True

    def version(self) -> str | None:
        """The first line the version command prints, or None if there is none or it fails."""
        if self.spec.version_command is None:
            return None
        argv = [self._outside(a, "version_command") for a in self.spec.version_command]
        try:
            out = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=VERSION_TIMEOUT_S,
                env=clean_environ(),
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        text = (out.stdout.strip() or out.stderr.strip()) if out.returncode == 0 else ""
        return text.splitlines()[0] if text else None

    def info(self) -> dict[str, str | bool]:
        """Extra facts for the result's server block (e.g. a binary's sha256)."""
        info: dict[str, str | bool] = {}
        if self.spec.user_file is not None:
            info["servers_file"] = str(self.spec.user_file)
        if self.binary is not None and self.binary.is_file():
            info["binary"] = str(self.binary)
            info["binary_sha256"] = sha256_of(self.binary)
        return info

    # -- the cell -----------------------------------------------------------------------------

    def command(self, port: int, setup: ServerSetup) -> list[str]:
        """The argv that starts the server on 127.0.0.1:port (under `setup.wrap`, if any)."""
        values = self._values(port, setup)
        argv = self._render(self.spec.command, values, "command", setup)
        if setup.no_services:
            argv += self._render(
                self.spec.no_services_args or (), values, "no_services_args", setup
            )
        return [*setup.wrap, *argv]

    def init_command(self, setup: ServerSetup) -> list[str] | None:
        """The argv run to completion before the server starts, if it has one (no {port}: it
        runs before one is chosen)."""
        if self.spec.init_command is None:
            return None
        values = self._values(0, setup)
        del values["port"]
        return self._render(self.spec.init_command, values, "init_command", setup)

    def process_count(self, no_services: bool, server_workers: int) -> int:
        """How many processes a start of this server runs: its API processes
        ({server_workers}, if its start uses them) and its services process, if any."""
        api = server_workers if self.spec.uses("server_workers") else 1
        return api + int(self.spec.services_command is not None and not no_services)

    def services_command(self, port: int, setup: ServerSetup) -> list[str] | None:
        """The argv of the process beside the server that runs its services, if it has one
        and the cell runs them (under `setup.wrap`, if any)."""
        if self.spec.services_command is None or setup.no_services:
            return None
        values = self._values(port, setup)
        argv = self._render(self.spec.services_command, values, "services_command", setup)
        return [*setup.wrap, *argv]

    def environment(self, port: int, setup: ServerSetup) -> dict[str, str]:
        """The variables the server needs, on top of `clean_environ()`."""
        values = self._values(port, setup)
        cell = _cell_words(setup)
        sections = ["", setup.db, setup.broker]
        if setup.no_services:
            sections.append(NO_SERVICES_SECTION)
        if setup.seeding:
            sections.append(SEEDING_SECTION)
        if setup.cost:
            sections.append(COST_SECTION)
        env: dict[str, str] = {}
        for section in sections:
            table = f"[servers.{self.name}.env{'.' + section if section else ''}]"
            for var, template in self.spec.env.get(section, {}).items():
                where = f"{self._source()}: {table} {var}"
                env[var] = render(template, values, where, cell)
        return env

    # -- helpers --------------------------------------------------------------------------

    def _no_services_problem(self) -> str | None:
        if self.spec.no_services_args is None and NO_SERVICES_SECTION not in self.spec.env:
            return (
                f"the {self.name} server does not say how to run without its services: "
                f"give it no_services_args or [env.{NO_SERVICES_SECTION}] ({self._where()})"
            )
        return None

    def _render(
        self, templates: Sequence[str], values: Mapping[str, str], key: str, setup: ServerSetup
    ) -> list[str]:
        """The spec's `key` (a list of templates) rendered for the cell."""
        where, cell = f"{self._where()} {key}", _cell_words(setup)
        return [render(t, values, where, cell) for t in templates]

    def _source(self) -> str:
        return str(self.spec.user_file) if self.spec.user_file else "built-in servers"

    def _where(self) -> str:
        return f"{self._source()}: [servers.{self.name}]"

    def _outside(self, template: str, what: str) -> str:
        values = {"python": sys.executable, "config_dir": str(self.spec.config_dir)}
        if self.binary is not None:
            values["binary"] = str(self.binary)
        return render(template, values, f"{self._where()} {what}", "a command outside a cell")

    def _values(self, port: int, setup: ServerSetup) -> dict[str, str]:
        values = {
            "port": str(port),
            "host": LOOPBACK,
            "workdir": str(setup.datadir),
            "sqlite_path": str(setup.sqlite_path),
            "python": sys.executable,
            "config_dir": str(self.spec.config_dir),
            "server_workers": str(setup.server_workers),
        }
        if self.binary is not None:
            values["binary"] = str(self.binary)
        if setup.db not in DBS:
            raise ConfigError(f"unknown db {setup.db!r}")
        if setup.db == "postgres":
            if setup.postgres is None:
                raise ValueError("a postgres cell needs a provisioned database")
            pg = setup.postgres
            values |= {
                "db_url": pg.url,
                "pg_host": pg.host,
                "pg_port": str(pg.port),
                "pg_user": pg.user,
                "pg_password": pg.password,
                "pg_database": pg.database,
            }
        if setup.broker == "redis":
            if setup.redis is None:
                raise ValueError("a redis cell needs a provisioned redis")
            r = setup.redis
            values |= {
                "redis_host": r.host,
                "redis_port": str(r.port),
                "redis_db": str(r.db),
                "redis_password": r.password or "",
                "redis_url": r.url(),
            }
        return values


def _cell_words(setup: ServerSetup) -> str:
    return f"a {setup.db}, {setup.broker} cell"
