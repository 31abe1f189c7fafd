"""The `local` provider: PostgreSQL (initdb + postgres) and redis-server from PATH.

PostgreSQL binaries not on PATH are also looked for in /usr/lib/postgresql/<newest>/bin, where
Debian installs them.

Each service gets its own temporary folder (its data; deleted at the end, or by a later run
once this one is gone: bench.core.ownership marks it), a free port on 127.0.0.1 (a new one if
another process takes it first), and its log in the cell's folder.

PostgreSQL refuses to run as root. When prefect-bench runs as root, both services run as the
system user `prefect-bench` (created with `useradd --system` if missing), or as `nobody` when
that user cannot be created. The temporary folder then belongs to that user, and every folder
above it must let that user through (the default /tmp does).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import psycopg
import redis

from bench.core.errors import ProvisionError
from bench.core.failures import from_log
from bench.core.ownership import FOLDER_PREFIX, Labels, mark_folder, record_process
from bench.core.ports import LOOPBACK, PortTaken, lost_port_race, on_free_port
from bench.core.process import ManagedProcess
from bench.results import ServiceInfo
from bench.services._common import (
    Teardown,
    env_or_os,
    file_size,
    new_password,
    read_from,
    service_info,
    tail,
    wait_for,
)
from bench.services.base import PostgresService, RedisService, ServiceKind, ServiceProvider
from bench.services.kinds import KINDS, POSTGRES, REDIS, Kind, PostgresLogin

DEBIAN_PG_ROOT = "/usr/lib/postgresql"
SERVICE_USER = "prefect-bench"
FALLBACK_USER = "nobody"
PG_USER = "prefect"
PG_DATABASE = "prefect"
INITDB_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceUser:
    """Who the services run as: None means prefect-bench's own user (not root)."""

    name: str | None
    uid: int
    gid: int


def service_user() -> ServiceUser:
    """The unprivileged user to run services as; created when running as root and missing."""
    if os.geteuid() != 0:
        return ServiceUser(None, os.geteuid(), os.getegid())
    for attempt in range(2):
        try:
            entry = pwd.getpwnam(SERVICE_USER)
            return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
        except KeyError:
            if attempt or not shutil.which("useradd"):
                break
            # a system user without a home or a login shell; concurrent creation is harmless
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                capture_output=True,
                check=False,
            )  # fmt: skip
    entry = pwd.getpwnam(FALLBACK_USER)
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _blocked_at(path: Path, user: ServiceUser) -> Path | None:
    """The first folder above `path` that `user` cannot enter, if any."""
    if user.uid == 0:
        return None
    for folder in [path, *path.parents]:
        st = folder.stat()
        if st.st_uid == user.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == user.gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return folder
    return None


def find_binary(binary: str, path: str) -> str | None:
    """`binary` on `path`; PostgreSQL's (its client tools too) also in Debian's
    /usr/lib/postgresql/<newest>/bin, which Debian's packages do not put on PATH."""
    if found := shutil.which(binary, path=path):
        return found
    if binary in (*POSTGRES.binaries, *POSTGRES.tools):
        versions = sorted(
            Path(DEBIAN_PG_ROOT).glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1,
        )
        for folder in reversed(versions):
            if found := shutil.which(binary, path=str(folder)):
                return found
    return None


class LocalProvider(ServiceProvider):
    """initdb/postgres and redis-server from PATH, run by an unprivileged user."""

    name: ClassVar[str] = "local"

    def __init__(self, env: Mapping[str, str] | None = None, tmp_root: Path | None = None) -> None:
        self.env = dict(env_or_os(env))
        self.tmp_root = tmp_root

    @classmethod
    def unavailable_reason(
        cls, kind: ServiceKind, env: Mapping[str, str] | None = None
    ) -> str | None:
        path = env_or_os(env).get("PATH", os.defpath)
        missing = [b for b in KINDS[kind].binaries if find_binary(b, path) is None]
        if missing:
            return f"{' and '.join(missing)} not found on PATH: {KINDS[kind].install}"
        if os.geteuid() == 0:
            try:
                service_user()
            except KeyError:
                return (
                    f"running as root, and neither the user {SERVICE_USER} can be created nor "
                    f"{FALLBACK_USER} exists: create an unprivileged user {SERVICE_USER}"
                )
        return None

    # -- shared steps -------------------------------------------------------------------

    def _which(self, binary: str) -> str:
        found = find_binary(binary, self.env.get("PATH", os.defpath))
        if found is None:
            raise ProvisionError(f"{binary} not found on PATH")
        return found

    def _child_env(self) -> dict[str, str]:
        """The environment without PG*/REDIS* variables that would redirect the services."""
        env = {k: v for k, v in self.env.items() if not k.startswith(("PG", "REDIS"))}
        env["LC_ALL"] = "C"
        return env

    def _tempdir(self, teardown: Teardown, kind: Kind, labels: Labels, user: ServiceUser) -> Path:
        """A fresh folder owned by `user`, marked with its owner, deleted by `teardown`."""
        root = self.tmp_root or Path(tempfile.gettempdir())
        folder = teardown.own(
            lambda: Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{kind.name}-", dir=root)),
            lambda p: shutil.rmtree(p, ignore_errors=True),
        )
        mark_folder(folder, labels, kind.name)
        if os.geteuid() == 0:
            os.chown(folder, user.uid, user.gid)
        if (blocked := _blocked_at(folder, user)) is not None:
            raise ProvisionError(
                f"the user {user.name} cannot enter {blocked}, so it cannot use {folder}: "
                "choose a temporary folder every user may enter (TMPDIR)"
            )
        return folder

    def _start(
        self, teardown: Teardown, argv: list[str], cwd: Path, log: Path, user: ServiceUser
    ) -> ManagedProcess:
        proc = teardown.own(
            lambda: ManagedProcess(
                argv,
                env=self._child_env(),
                cwd=cwd,
                log_path=log,
                user=user.name,
                group=None if user.name is None else user.gid,
            ),
            lambda p: p.stop(STOP_TIMEOUT_S),
        )
        # the owner file lets a later run stop this process if prefect-bench dies unusually
        record_process(cwd, proc.process)
        return proc

    def _serve(
        self,
        teardown: Teardown,
        kind: Kind,
        argv_for: Callable[[int], list[str]],
        probe: Callable[[int], T | None],
        cwd: Path,
        log: Path,
        user: ServiceUser,
    ) -> tuple[int, ManagedProcess, T]:
        """Start the kind's server on a free port until one start wins its port; wait until
        probe(port) answers (not None). A port taken by someone else, whether the bind fails or
        a foreign server answers the probe (which then raises PortTaken), means a new port."""
        what = kind.server

        def attempt(port: int) -> tuple[int, ManagedProcess, T]:
            offset = file_size(log)
            proc = self._start(teardown, argv_for(port), cwd, log, user)
            try:
                value = wait_for(
                    functools.partial(probe, port),
                    timeout_s=READY_TIMEOUT_S,
                    what=f"{what} on port {port}",
                    abort=functools.partial(_exit_reason, what, proc),
                )
            except PortTaken:
                proc.stop(STOP_TIMEOUT_S)
                raise
            except ProvisionError as exc:
                text = read_from(log, offset)
                if proc.exit_code() is not None and lost_port_race(text):
                    raise PortTaken(f"port {port}: {exc}") from None  # taken before our bind
                raise from_log(ProvisionError, f"local {exc}", tail(text), log) from None
            return port, proc, value

        return on_free_port(attempt, what, ProvisionError)

    def _info(
        self, started: float, version: str, binary: str, user: ServiceUser, proc: ManagedProcess
    ) -> ServiceInfo:
        """The result's record of a local service."""
        return service_info(
            self.name,
            started,
            version=version or None,
            binary=binary,
            run_as=user.name,
            pid=proc.pid,
        )

    # -- PostgreSQL ---------------------------------------------------------------------

    @contextlib.contextmanager
    def postgres(self, workdir: Path, labels: Labels) -> Iterator[PostgresService]:
        started = time.monotonic()
        user = service_user()
        log = workdir / "postgres.log"
        password = new_password()
        binary = self._which(POSTGRES.server)
        with Teardown() as teardown:
            tmp = self._tempdir(teardown, POSTGRES, labels, user)
            datadir, pwfile = tmp / "data", tmp / "pwfile"
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            if os.geteuid() == 0:
                os.chown(pwfile, user.uid, user.gid)
            self._initdb(teardown, datadir, pwfile, tmp, log, user)
            pwfile.unlink()

            def argv(port: int) -> list[str]:
                return [
                    binary, "-D", str(datadir), *POSTGRES.listen_args(port),
                    # TCP only: a socket path over 107 bytes (deep TMPDIRs, e.g. nox's) fails
                    "-c", "unix_socket_directories=",
                ]  # fmt: skip

            def claim(conn: psycopg.Connection) -> None:
                """Make sure the server that answered is ours, then create our database."""
                row = conn.execute("SHOW data_directory").fetchone()
                if row is None or Path(row[0]).resolve() != datadir.resolve():
                    raise PortTaken("another PostgreSQL server answered on its port")
                conn.execute(f"CREATE DATABASE {PG_DATABASE}")

            def probe(port: int) -> str | None:
                return POSTGRES.probe(
                    PostgresLogin(LOOPBACK, port, PG_USER, password, "postgres"), claim
                )

            port, proc, version = self._serve(teardown, POSTGRES, argv, probe, tmp, log, user)
            info = self._info(started, version, binary, user, proc)
            yield PostgresService(LOOPBACK, port, PG_USER, password, PG_DATABASE, info)

    def _initdb(
        self,
        teardown: Teardown,
        datadir: Path,
        pwfile: Path,
        cwd: Path,
        log: Path,
        user: ServiceUser,
    ) -> None:
        offset = file_size(log)
        argv = [
            self._which("initdb"), "-D", str(datadir), "-U", PG_USER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        proc = self._start(teardown, argv, cwd, log, user)
        try:
            wait_for(proc.exit_code, timeout_s=INITDB_TIMEOUT_S, what="initdb")
        except ProvisionError as exc:
            text = tail(read_from(log, offset))
            raise from_log(ProvisionError, str(exc), text, log) from None
        if proc.exit_code() != 0:
            text = tail(read_from(log, offset))
            said = f"initdb failed with code {proc.exit_code()}"
            raise from_log(ProvisionError, said, text, log)

    # -- Redis --------------------------------------------------------------------------

    @contextlib.contextmanager
    def redis(self, workdir: Path, labels: Labels) -> Iterator[RedisService]:
        started = time.monotonic()
        user = service_user()
        log = workdir / "redis.log"
        binary = self._which(REDIS.server)
        with Teardown() as teardown:
            tmp = self._tempdir(teardown, REDIS, labels, user)

            def argv(port: int) -> list[str]:
                return [
                    binary, *REDIS.listen_args(port), "--save", "", "--appendonly", "no",
                    "--dir", str(tmp), "--daemonize", "no", "--logfile", "",
                    "--protected-mode", "yes",
                ]  # fmt: skip

            def claim(client: redis.Redis) -> None:
                """Make sure the server that answered is ours: it runs in our folder."""
                answered_dir = client.config_get("dir").get("dir")
                if answered_dir is None or Path(answered_dir).resolve() != tmp.resolve():
                    raise PortTaken("another Redis server answered on its port")

            def probe(port: int) -> str | None:
                return REDIS.probe(LOOPBACK, port, claim)

            port, proc, version = self._serve(teardown, REDIS, argv, probe, tmp, log, user)
            info = self._info(started, version, binary, user, proc)
            yield RedisService(LOOPBACK, port, 0, info)


def _exit_reason(what: str, proc: ManagedProcess) -> str | None:
    code = proc.exit_code()
    return None if code is None else f"{what} exited with code {code}"
