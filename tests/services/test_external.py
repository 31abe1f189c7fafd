"""The external provider against real servers: a PostgreSQL and a redis-server that the test
starts with the local provider and then treats as somebody else's."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from bench import services
from bench.core.errors import CellSkipped, ProvisionError
from bench.core.ownership import Labels
from bench.core.ports import free_port
from bench.services.base import PostgresService, RedisService
from bench.services.external import (
    DB_PREFIX,
    POSTGRES_ENV,
    REDIS_DB_ENV,
    REDIS_ENV,
    ExternalProvider,
    remove_leftover_databases,
)
from bench.services.local import LocalProvider

if TYPE_CHECKING:
    from tests.conftest_services import Children

pytest_plugins = ["tests.conftest_services"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        LocalProvider.unavailable_reason("postgres") is not None
        or LocalProvider.unavailable_reason("redis") is not None,
        reason="these tests start their 'external' servers with the local provider, which is "
        f"unavailable: {LocalProvider.unavailable_reason('postgres')}; "
        f"{LocalProvider.unavailable_reason('redis')}",
    ),
]


@pytest.fixture(scope="module")
def someone_elses_postgres(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PostgresService]:
    """A PostgreSQL server with a bystander database holding data that must survive."""
    with LocalProvider().postgres(
        tmp_path_factory.mktemp("external-pg"), Labels("external-tests", "server")
    ) as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bystander")
            conn.execute(f"CREATE ROLE nocreate LOGIN PASSWORD '{pg.password}'")
        with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/bystander") as conn:
            conn.execute("CREATE TABLE precious (x int)")
            conn.execute("INSERT INTO precious VALUES (1)")
        yield pg


@pytest.fixture
def someone_elses_redis(tmp_path: Path, labels: Labels) -> Iterator[RedisService]:
    with LocalProvider().redis(tmp_path, labels) as rs:
        yield rs


def admin_url(pg: PostgresService, user: str | None = None, password: str | None = None) -> str:
    return f"postgresql://{user or pg.user}:{password or pg.password}@{pg.host}:{pg.port}/postgres"


def databases(pg: PostgresService) -> set[str]:
    with psycopg.connect(admin_url(pg)) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_external_postgres_gets_its_own_database_and_drops_it(
    someone_elses_postgres: PostgresService, tmp_path: Path, labels: Labels
) -> None:
    pg = someone_elses_postgres
    before = databases(pg)
    with ExternalProvider({POSTGRES_ENV: admin_url(pg)}).postgres(tmp_path, labels) as mine:
        assert mine.database.startswith(DB_PREFIX) and mine.database not in before
        assert (mine.host, mine.port, mine.user) == (pg.host, pg.port, pg.user)
        assert mine.info.provider == "external" and mine.info.version
        with psycopg.connect(mine.url) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (3)")
            assert conn.execute("SELECT x FROM t").fetchall() == [(3,)]
    assert databases(pg) == before
    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/bystander") as conn:
        assert conn.execute("SELECT x FROM precious").fetchall() == [(1,)]


def _is_dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_the_drop_ends_connections_to_its_database_only(
    someone_elses_postgres: PostgresService, tmp_path: Path, labels: Labels
) -> None:
    pg = someone_elses_postgres
    with psycopg.connect(pg.url.rsplit("/", 1)[0] + "/bystander") as elsewhere:
        with ExternalProvider({POSTGRES_ENV: admin_url(pg)}).postgres(tmp_path, labels) as mine:
            lingering = psycopg.connect(mine.url)
        assert _is_dead(lingering)
        lingering.close()
        assert elsewhere.execute("SELECT count(*) FROM precious").fetchone() == (1,)


BAD_POSTGRES = {
    "wrong password": (lambda pg: admin_url(pg, password="wrong"), "password authentication"),
    "no server": (
        lambda pg: f"postgresql://prefect:pw@127.0.0.1:{free_port()}/postgres",
        "cannot connect",
    ),
    "no CREATEDB right": (
        lambda pg: admin_url(pg, user="nocreate"),
        "ALTER ROLE nocreate CREATEDB",
    ),
    "not a postgres URL": (lambda pg: "mysql://u:pw@127.0.0.1/x", "must look like postgresql://"),
    "no user": (lambda pg: f"postgresql://{pg.host}:{pg.port}/postgres", "names no user"),
}


@pytest.mark.parametrize("case", list(BAD_POSTGRES))
def test_bad_postgres_url_is_a_clear_error_and_leaves_nothing(
    case: str, someone_elses_postgres: PostgresService, tmp_path: Path, labels: Labels
) -> None:
    pg = someone_elses_postgres
    make_url, expected = BAD_POSTGRES[case]
    url = make_url(pg)
    before = databases(pg)
    with pytest.raises(ProvisionError) as error:  # noqa: SIM117
        with ExternalProvider({POSTGRES_ENV: url}).postgres(tmp_path, labels):
            pytest.fail("should not be provided")
    assert expected in str(error.value)
    assert pg.password not in str(error.value) and ":wrong@" not in str(error.value)
    assert databases(pg) == before


def test_leftover_database_of_a_killed_run_is_dropped_and_a_live_ones_kept(
    someone_elses_postgres: PostgresService, tmp_path: Path, labels: Labels, children: Children
) -> None:
    env = {POSTGRES_ENV: admin_url(someone_elses_postgres)}
    child = children.start(
        f"""
        from pathlib import Path
        from bench.core.ownership import Labels
        from bench.services.external import ExternalProvider
        with ExternalProvider().postgres(Path({str(tmp_path)!r}), Labels("crashed", "c")) as pg:
            print("DB", pg.database, flush=True)
            input()
        """,
        env=env,
    )
    crashed = children.read_line(child, "DB ")
    child.send_signal(signal.SIGKILL)
    child.wait()
    with ExternalProvider(env).postgres(tmp_path, labels) as live:
        assert {crashed, live.database} <= databases(someone_elses_postgres)
        assert remove_leftover_databases(env) == [crashed]
        assert live.database in databases(someone_elses_postgres)
    assert not {crashed, live.database} & databases(someone_elses_postgres)


def test_external_redis_uses_its_db_flushes_it_and_nothing_else(
    someone_elses_redis: RedisService, tmp_path: Path, labels: Labels
) -> None:
    rs = someone_elses_redis
    with redis.Redis.from_url(rs.url(5)) as other:
        other.set("someone", "else")
        provider = ExternalProvider({REDIS_ENV: rs.url(3)})
        with provider.redis(tmp_path, labels) as mine:
            assert (mine.host, mine.port, mine.db) == (rs.host, rs.port, 3)
            assert mine.info.provider == "external" and mine.info.version
            with redis.Redis.from_url(mine.url()) as r:
                r.set("k", "v")
                assert r.get("k") == b"v"
        with redis.Redis.from_url(rs.url(3)) as r:
            assert r.dbsize() == 0
        assert other.get("someone") == b"else"
    # BENCH_REDIS_DB picks the db over the URL's
    provider = ExternalProvider({REDIS_ENV: rs.url(3), REDIS_DB_ENV: "4"})
    with provider.redis(tmp_path, labels) as mine:
        assert mine.db == 4


def test_external_redis_refuses_a_db_with_data_and_leaves_it_intact(
    someone_elses_redis: RedisService, tmp_path: Path, labels: Labels
) -> None:
    rs = someone_elses_redis
    with redis.Redis.from_url(rs.url(2)) as r:
        r.set("precious", "1")
        with pytest.raises(ProvisionError, match=r"redis db 2 .* is not empty \(1 keys\)"):  # noqa: SIM117
            with ExternalProvider({REDIS_ENV: rs.url(2)}).redis(tmp_path, labels):
                pass
        assert r.get("precious") == b"1"


def test_external_redis_with_a_password(
    someone_elses_redis: RedisService, tmp_path: Path, labels: Labels
) -> None:
    rs = someone_elses_redis
    with redis.Redis.from_url(rs.url()) as r:
        r.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@{rs.host}:{rs.port}/1"
    with ExternalProvider({REDIS_ENV: url}).redis(tmp_path, labels) as mine:
        assert mine.password == "s3cret" and mine.url() == url
        with redis.Redis.from_url(mine.url()) as r:
            assert r.ping()
    bad = f"redis://:wrong@{rs.host}:{rs.port}/1"
    with pytest.raises(ProvisionError) as error:  # noqa: SIM117
        with ExternalProvider({REDIS_ENV: bad}).redis(tmp_path, labels):
            pass
    assert "wrong" not in str(error.value) and "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (lambda: f"redis://127.0.0.1:{free_port()}/0", "cannot use redis db 0"),
        (lambda: "http://127.0.0.1:6379", "must look like redis://"),
        (lambda: "redis://127.0.0.1:6379/x", "must be a number"),
        (lambda: "redis://someone:pw@127.0.0.1:6379/0", "ACL user"),
    ],
)
def test_bad_redis_url_is_a_clear_error(
    url: object, expected: str, tmp_path: Path, labels: Labels
) -> None:
    assert callable(url)
    with pytest.raises(ProvisionError, match=expected):  # noqa: SIM117
        with ExternalProvider({REDIS_ENV: url()}).redis(tmp_path, labels):
            pass


def test_external_comes_first_when_its_url_is_set_and_forcing_it_without_says_why() -> None:
    env = {POSTGRES_ENV: "postgresql://u:pw@127.0.0.1:1/postgres", "PATH": "/usr/bin:/bin"}
    assert services.choose("postgres", None, env).name == "external"
    with pytest.raises(CellSkipped, match=f"provider external cannot provide redis.*{REDIS_ENV}"):
        services.choose("redis", "external", env)
    assert ExternalProvider.unavailable_reason("redis", {}) is not None
