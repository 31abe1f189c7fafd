"""The `external` provider: servers the user already runs, given by URL.

PostgreSQL (BENCH_POSTGRES_URL=postgresql://user:pw@host:port/db): the tool creates its own
database `prefect_bench_<random>` (the user needs CREATEDB), marks it with its owner in the
database's comment, and drops it at the end, ending only the connections to that database.
The database named in the URL is used for administration only. Query parameters of the URL
(sslmode, ...) apply to that administration, not to the server under test.

Redis (BENCH_REDIS_URL=redis://[:pw@]host:port[/db]): the tool uses one logical db, from
BENCH_REDIS_DB, else the URL's path, else 0. It refuses a db that holds keys (it may be someone
else's data) and flushes its db, and only that one, at the end.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

import psycopg
import redis
from psycopg import sql

from bench.core.errors import ProvisionError
from bench.core.ownership import Labels, owner_is_gone, owner_labels
from bench.results import redact
from bench.services._common import Teardown, env_or_os, service_info
from bench.services.base import PostgresService, RedisService, ServiceKind, ServiceProvider
from bench.services.kinds import KINDS, POSTGRES, REDIS, Kind, PostgresLogin

# The variables, named here too for the messages of this module and for its callers.
POSTGRES_ENV = POSTGRES.url_env
REDIS_ENV = REDIS.url_env
REDIS_DB_ENV = REDIS.db_env
DB_PREFIX = "prefect_bench_"


def _not_set(kind: Kind) -> str:
    return f"{kind.url_env} is not set: set {kind.url_env}={kind.url_help}"


def _url_parts(url: str, kind: Kind) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ProvisionError(f"{kind.url_env} is not a valid URL ({redact(url)}): {exc}") from None
    if parts.scheme.split("+")[0] not in kind.url_schemes or not parts.hostname:
        raise ProvisionError(
            f"{kind.url_env} must look like {kind.url_schemes[0]}://user:password@host:port/..., "
            f"got {redact(url)}"
        )
    return parts


@dataclass(frozen=True)
class PostgresTarget:
    """Where BENCH_POSTGRES_URL points: credentials and the database used to administer."""

    host: str
    port: int
    user: str
    password: str
    admin_db: str
    options: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> PostgresTarget:
        parts = _url_parts(url, POSTGRES)
        if not parts.username:
            raise ProvisionError(f"{POSTGRES_ENV} names no user: {redact(url)}")
        return cls(
            host=parts.hostname or "",
            port=parts.port or POSTGRES.default_port,
            user=unquote(parts.username),
            password=unquote(parts.password or ""),
            admin_db=unquote(parts.path.lstrip("/")) or "postgres",
            options=dict(parse_qsl(parts.query)),
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self, dbname: str | None = None) -> psycopg.Connection:
        """An autocommit connection to `dbname`, by default the administration database."""
        login = PostgresLogin(
            self.host, self.port, self.user, self.password, dbname or self.admin_db, self.options
        )
        return POSTGRES.connect(login)


def _drop(target: PostgresTarget, name: str) -> None:
    """Drop database `name`, ending the sessions connected to it (and no other)."""
    try:
        with target.connect() as conn:
            drop = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
            if conn.info.server_version >= 130000:
                conn.execute(drop + sql.SQL(" WITH (FORCE)"))  # ends that database's sessions
            else:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                conn.execute(drop)
    except psycopg.Error as exc:
        raise ProvisionError(
            f"could not drop the database {name} at {target.where}: {exc}; "
            f"drop it yourself (DROP DATABASE {name} WITH (FORCE))"
        ) from None


def remove_leftover_databases(env: Mapping[str, str] | None = None) -> list[str]:
    """Drop prefect_bench_* databases at BENCH_POSTGRES_URL whose owning process is gone.

    Only databases whose comment carries prefect-bench's owner marks qualify. Returns the names
    dropped; an unset or unreachable URL means nothing to do.
    """
    url = env_or_os(env).get(POSTGRES_ENV)
    if not url:
        return []
    try:
        target = PostgresTarget.parse(url)
        with target.connect() as conn:
            rows = conn.execute(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database"
                " WHERE datname LIKE %s",
                (DB_PREFIX.replace("_", r"\_") + "%",),
            ).fetchall()
    except (ProvisionError, psycopg.Error):
        return []
    dropped = []
    for name, comment in rows:
        try:
            marks = json.loads(comment or "")
        except ValueError:
            continue
        if isinstance(marks, dict) and owner_is_gone(marks):
            with contextlib.suppress(ProvisionError):
                _drop(target, name)
                dropped.append(name)
    return dropped


def _flush(client: redis.Redis, where: str) -> None:
    try:
        client.flushdb()
    except redis.RedisError as exc:
        raise ProvisionError(f"could not flush {where} at the end: {exc}") from None


class ExternalProvider(ServiceProvider):
    """PostgreSQL and Redis servers given by BENCH_POSTGRES_URL and BENCH_REDIS_URL."""

    name: ClassVar[str] = "external"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env_or_os(env))

    @classmethod
    def unavailable_reason(
        cls, kind: ServiceKind, env: Mapping[str, str] | None = None
    ) -> str | None:
        if env_or_os(env).get(KINDS[kind].url_env):
            return None
        return _not_set(KINDS[kind])

    def _url(self, kind: Kind) -> str:
        url = self.env.get(kind.url_env)
        if not url:
            raise ProvisionError(_not_set(kind))
        return url

    @contextlib.contextmanager
    def postgres(self, workdir: Path, labels: Labels) -> Iterator[PostgresService]:
        started = time.monotonic()
        url = self._url(POSTGRES)
        target = PostgresTarget.parse(url)
        name = DB_PREFIX + secrets.token_hex(6)
        with Teardown() as teardown:
            try:
                conn = target.connect()
            except psycopg.Error as exc:
                raise ProvisionError(
                    f"cannot connect to {POSTGRES_ENV} ({redact(url)}): {redact(str(exc))}"
                ) from None
            with conn:
                try:
                    teardown.own(
                        lambda: conn.execute(
                            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                        ),
                        lambda _: _drop(target, name),
                    )
                except psycopg.errors.InsufficientPrivilege as exc:
                    raise ProvisionError(
                        f"the user {target.user} may not create databases at {target.where} "
                        f"({str(exc).strip()}): grant it CREATEDB (ALTER ROLE {target.user} "
                        f"CREATEDB) or give {POSTGRES_ENV} for a user who may"
                    ) from None
                except psycopg.Error as exc:
                    raise ProvisionError(
                        f"cannot create a database at {target.where}: {exc}"
                    ) from None
                marks = json.dumps(owner_labels(labels, POSTGRES.name))
                version = None
                with contextlib.suppress(psycopg.Error):  # a comment is a courtesy
                    conn.execute(
                        sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                            sql.Identifier(name), sql.Literal(marks)
                        )
                    )
                with contextlib.suppress(psycopg.Error):
                    version = POSTGRES.version(conn)
            try:  # the server under test will connect the same way
                target.connect(name).close()
            except psycopg.Error as exc:
                raise ProvisionError(
                    f"created the database {name} at {target.where} but cannot connect to it: {exc}"
                ) from None
            info = service_info(self.name, started, version=version, host=target.host)
            yield PostgresService(
                target.host, target.port, target.user, target.password, name, info
            )

    @contextlib.contextmanager
    def redis(self, workdir: Path, labels: Labels) -> Iterator[RedisService]:
        started = time.monotonic()
        url = self._url(REDIS)
        parts = _url_parts(url, REDIS)
        db_text = self.env.get(REDIS_DB_ENV) or parts.path.strip("/") or "0"
        try:
            db = int(db_text)
            if db < 0:
                raise ValueError
        except ValueError:
            raise ProvisionError(f"the redis db must be a number >= 0, got {db_text!r}") from None
        user = unquote(parts.username or "")
        if user not in ("", "default"):
            raise ProvisionError(
                f"{REDIS_ENV} names the ACL user {user!r}: only password authentication "
                "(redis://:password@host:port) is supported"
            )
        password = unquote(parts.password) if parts.password else None
        host, port = parts.hostname or "", parts.port or REDIS.default_port
        where = f"redis db {db} at {host}:{port}"
        with Teardown() as teardown:
            client = REDIS.client(
                host, port, db=db, password=password, ssl=parts.scheme == "rediss"
            )
            teardown.callback(client.close)
            try:
                keys = client.dbsize()
            except redis.RedisError as exc:
                raise ProvisionError(
                    f"cannot use {where} ({REDIS_ENV}={redact(url)}): {exc}"
                ) from None
            if keys:
                raise ProvisionError(
                    f"{where} is not empty ({keys} keys); refusing to use it, so as not to "
                    f"delete someone else's data: pick an empty db with {REDIS_DB_ENV}, or "
                    f"flush it yourself if it is a crashed run's (redis-cli -n {db} flushdb)"
                )
            teardown.callback(_flush, client, where)
            version = None
            with contextlib.suppress(redis.RedisError):
                version = REDIS.version(client)
            info = service_info(self.name, started, version=version, host=host)
            yield RedisService(host, port, db, info, password)
