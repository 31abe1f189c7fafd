"""Any server described as data (bench.servers_config.ServerSpec): a servers.toml entry, and the
base of the built-in python and zig adapters."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bench.errors import CellSkipped, ConfigError, ServerError
from bench.ports import LOOPBACK
from bench.process import ManagedProcess, wait_until
from bench.servers.base import ServerAdapter, ServerSetup, clean_environ
from bench.servers_config import DB_SECTIONS, NO_SERVICES_SECTION, ServerSpec, render

VERSION_TIMEOUT_S = 30.0


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


def run_logged(argv: list[str], *, cwd: Path, log_path: Path, timeout_s: float, what: str) -> None:
    """Run a build step to completion, its output appended to `log_path`.

    ServerError with the log's tail if it cannot start, fails or outlasts `timeout_s`; the step
    (its whole process tree) is stopped on any exception, Ctrl-C included.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ cd {cwd} && {' '.join(argv)}\n")
    try:
        proc = ManagedProcess(argv, env=clean_environ(), cwd=cwd, log_path=log_path)
    except OSError as exc:
        raise ServerError(f"{what} could not start ({argv[0]}): {exc}") from exc
    try:
        wait_until(lambda: proc.exit_code() is not None, timeout_s=timeout_s, interval_s=0.1)
    except TimeoutError:
        proc.stop()
        raise ServerError(
            f"{what} did not finish within {timeout_s:g} s; last lines of {log_path}:\n"
            f"{proc.log_tail()}"
        ) from None
    except BaseException:
        proc.stop()
        raise
    if (code := proc.exit_code()) != 0:
        raise ServerError(
            f"{what} failed with exit code {code}; last lines of {log_path}:\n{proc.log_tail()}"
        )


class SpecServer(ServerAdapter):
    """Runs a ServerSpec: renders its command and environment for the cell, builds it if asked."""

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

    def unavailable_reason(self) -> str | None:
        if self.binary is not None and self.spec.build is None:
            # with a build step, the binary may only exist once prepare() has run
            return executable_problem(self.binary, f"the {self.name} server's binary")
        if self.binary is None and self.spec.uses("binary"):
            return f"the {self.name} server uses {{binary}} but names none ({self._where()})"
        return None

    def prepare(self, logdir: Path) -> None:
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
        info: dict[str, str | bool] = {}
        if self.spec.user_file is not None:
            info["servers_file"] = str(self.spec.user_file)
        if self.binary is not None and self.binary.is_file():
            info["binary"] = str(self.binary)
            info["binary_sha256"] = sha256_of(self.binary)
        return info

    # -- the cell -----------------------------------------------------------------------------

    def command(self, port: int, setup: ServerSetup) -> list[str]:
        values = self._values(port, setup)
        cell = _cell_words(setup)
        argv = [render(a, values, f"{self._where()} command", cell) for a in self.spec.command]
        if setup.no_services:
            extra = self.spec.no_services_args
            if extra is None and NO_SERVICES_SECTION not in self.spec.env:
                raise CellSkipped(
                    f"the {self.name} server does not say how to run without its services: "
                    f"give it no_services_args or [env.{NO_SERVICES_SECTION}] "
                    f"({self._where()})"
                )
            where = f"{self._where()} no_services_args"
            argv += [render(a, values, where, cell) for a in extra or ()]
        return argv

    def environment(self, port: int, setup: ServerSetup) -> dict[str, str]:
        values = self._values(port, setup)
        cell = _cell_words(setup)
        sections = ["", setup.db, setup.broker]
        if setup.no_services:
            sections.append(NO_SERVICES_SECTION)
        env: dict[str, str] = {}
        for section in sections:
            table = f"[servers.{self.name}.env{'.' + section if section else ''}]"
            for var, template in self.spec.env.get(section, {}).items():
                where = f"{self._source()}: {table} {var}"
                env[var] = render(template, values, where, cell)
        return env

    # -- helpers --------------------------------------------------------------------------

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
            "sqlite_path": str(setup.datadir / "prefect.db"),
            "python": sys.executable,
            "config_dir": str(self.spec.config_dir),
        }
        if self.binary is not None:
            values["binary"] = str(self.binary)
        if setup.db not in DB_SECTIONS:
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
