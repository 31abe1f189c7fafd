"""What PostgreSQL and Redis are, written once for every provider.

A provider says where a service runs (a container, a local process, a server the user runs);
what the service is lives here, one object per kind: its name in docker-compose.yml, its
binaries and how to install them, how to give it a port on 127.0.0.1, the variable and URL that
point at a server the user runs, and how to ask it whether it is ready and which version it is.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import psycopg
import redis
from psycopg.conninfo import make_conninfo
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench.core.ports import LOOPBACK
from bench.services.base import ServiceKind

CONNECT_TIMEOUT_S = 5
# While a server starts, each probe gives up soon so that the poll stays frequent (2 s is the
# least libpq accepts).
PROBE_TIMEOUT_S = 2


@dataclass(frozen=True)
class PostgresLogin:
    """Whom to connect as, where, to which database; libpq `options` (sslmode, ...) apply."""

    host: str
    port: int
    user: str
    password: str
    dbname: str
    options: Mapping[str, str] = field(default_factory=dict)


class Kind(ABC):
    """What every provider needs to know about one kind of service (`name` is its ServiceKind).

    Each kind adds how to speak to it: a connection or client, `version`, and `probe`, which
    waits for a starting server.
    """

    name: ClassVar[ServiceKind]
    compose_service: ClassVar[str]  # its service in docker-compose.yml
    server: ClassVar[str]  # the server's binary, also a container's default command
    binaries: ClassVar[tuple[str, ...]]  # what a machine needs to run it: the server and tools
    install: ClassVar[str]  # how to get the binaries
    url_env: ClassVar[str]  # the variable that points at a server the user runs
    url_schemes: ClassVar[tuple[str, ...]]  # the URL schemes it accepts, the usual one first
    url_help: ClassVar[str]  # what that variable must hold
    default_port: ClassVar[int]

    @abstractmethod
    def listen_args(self, port: int, hosts: Sequence[str] = (LOOPBACK,)) -> list[str]:
        """The server's command-line arguments that make it listen on `port` of `hosts` only
        (default 127.0.0.1)."""


class PostgresKind(Kind):
    """PostgreSQL, spoken to through psycopg."""

    name = "postgres"
    compose_service = "postgres"
    server = "postgres"
    binaries = ("initdb", server)
    # its client tools, for snapshots of a seeded database (bench.preload)
    tools = ("pg_dump", "pg_restore")
    install = "install PostgreSQL (apt-get install postgresql) or put its bin folder on PATH"
    url_env = "BENCH_POSTGRES_URL"
    url_schemes = ("postgresql", "postgres")
    url_help = (
        "postgresql://user:password@host:port/db, a server where that user may create databases"
    )
    default_port = 5432

    def listen_args(self, port: int, hosts: Sequence[str] = (LOOPBACK,)) -> list[str]:
        return ["-c", f"port={port}", "-c", f"listen_addresses={','.join(hosts)}"]

    def connect(
        self, login: PostgresLogin, timeout_s: int = CONNECT_TIMEOUT_S
    ) -> psycopg.Connection:
        """An autocommit connection."""
        params: dict[str, str | int] = {
            **login.options,
            "host": login.host,
            "port": login.port,
            "user": login.user,
            "password": login.password,
            "dbname": login.dbname,
            "connect_timeout": timeout_s,
        }
        return psycopg.connect(make_conninfo("", **params), autocommit=True)

    def version(self, conn: psycopg.Connection) -> str | None:
        """The server's version (`SHOW server_version`)."""
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else None

    def probe(
        self, login: PostgresLogin, check: Callable[[psycopg.Connection], object] | None = None
    ) -> str | None:
        """The server's version ('' if it says none) once it accepts `login`, after
        `check(connection)`; None while it refuses connections, as a starting server does."""
        try:
            conn = self.connect(login, PROBE_TIMEOUT_S)
        except psycopg.OperationalError:
            return None
        with conn:
            if check is not None:
                check(conn)
            return self.version(conn) or ""


class RedisKind(Kind):
    """Redis, spoken to through redis-py."""

    name = "redis"
    compose_service = "redis"
    server = "redis-server"
    binaries = (server,)
    install = "install redis-server (apt-get install redis-server)"
    url_env = "BENCH_REDIS_URL"
    db_env = "BENCH_REDIS_DB"  # the logical db to use, over the URL's
    url_schemes = ("redis", "rediss")
    url_help = f"redis://[:password@]host:port[/db] (and {db_env} to pick an empty db)"
    default_port = 6379

    def listen_args(self, port: int, hosts: Sequence[str] = (LOOPBACK,)) -> list[str]:
        return ["--port", str(port), "--bind", *hosts]

    def client(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        password: str | None = None,
        ssl: bool = False,
        timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> redis.Redis:
        """A client that fails at once (no retries with backoff): the callers poll on their own."""
        return redis.Redis(
            host=host,
            port=port,
            db=db,
            password=password,
            ssl=ssl,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    def version(self, client: redis.Redis) -> str | None:
        """The server's version (`INFO server`)."""
        version = client.info("server").get("redis_version")
        return str(version) if version else None

    def probe(
        self, host: str, port: int, check: Callable[[redis.Redis], object] | None = None
    ) -> str | None:
        """The server's version ('' if it says none) once it answers PING, after
        `check(client)`; None while it does not, as a starting server does."""
        client = self.client(host, port, timeout_s=PROBE_TIMEOUT_S)
        with contextlib.closing(client):
            try:
                client.ping()
            except redis.RedisError:  # not listening yet, loading, or not redis
                return None
            if check is not None:
                check(client)
            return self.version(client) or ""


POSTGRES = PostgresKind()
REDIS = RedisKind()
KINDS: dict[ServiceKind, Kind] = {kind.name: kind for kind in (POSTGRES, REDIS)}
