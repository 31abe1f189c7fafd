"""Backend telemetry against a real local PostgreSQL and redis-server: what is done inside a
window shows in its figures, what is not done does not, and a backend that cannot be read
gives an error entry instead of an exception."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from bench.core.ports import free_port
from bench.core.process import wait_until
from bench.observe import telemetry as telemetry_module
from bench.observe.telemetry import MAX_STREAMS, BackendTelemetry, per_item
from bench.results import ServiceInfo
from bench.services.base import PostgresService, RedisService
from bench.services.local import LocalProvider

K = 250
STATS_TIMEOUT_S = 15.0  # an idle backend adds its pending counts within 10 s (PostgreSQL 15+)

needs_postgres = pytest.mark.skipif(
    bool(LocalProvider.unavailable_reason("postgres")),
    reason=str(LocalProvider.unavailable_reason("postgres")),
)
needs_redis = pytest.mark.skipif(
    bool(LocalProvider.unavailable_reason("redis")),
    reason=str(LocalProvider.unavailable_reason("redis")),
)


def admin(pg: PostgresService) -> psycopg.Connection:
    """A superuser connection to the maintenance database (outside the cell's statistics)."""
    return psycopg.connect(pg.url.rsplit("/", 1)[0] + "/postgres", autocommit=True)


def new_database(pg: PostgresService, name: str) -> PostgresService:
    """A fresh database of its own on the test's server, so that tests do not see each other."""
    with admin(pg) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return dataclasses.replace(pg, database=name)


def inserted(pg: PostgresService) -> int:
    with admin(pg) as conn:
        row = conn.execute(
            "SELECT tup_inserted FROM pg_stat_database WHERE datname = %s", (pg.database,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def insert_rows(conn: psycopg.Connection, n: int) -> None:
    """One transaction inserting `n` rows, whose counts its backend adds to the shared
    statistics at once (not up to 10 s later, as an idle backend would)."""
    with conn.transaction():
        conn.execute("INSERT INTO items SELECT generate_series(1, %s)", (n,))
        conn.execute("SELECT pg_stat_force_next_flush()")


@pytest.mark.slow
@needs_postgres
def test_postgres_rows_inserted_in_the_window_show_in_its_deltas(
    postgres: PostgresService,
) -> None:
    pg = new_database(postgres, "inserts")
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (x int)")
        before = inserted(pg)
        with BackendTelemetry.for_cell(postgres=pg).window() as figures:
            insert_rows(conn, K)
            wait_until(lambda: inserted(pg) >= before + K, timeout_s=STATS_TIMEOUT_S)
    got = figures["postgres"]
    assert got["xact_commit"] >= 1
    assert got["tup_inserted"] >= K
    assert got["xids"] >= 1  # a transaction that wrote: counted live
    assert got["wal_mb"] > 0
    assert got["db_size_mb"] > 1
    assert got["connections"] == 1  # the test's own; telemetry's reader is not counted
    assert got["shared_server"] is False
    assert per_item(figures, K)["postgres_rows_written_per_item"] >= 1


@pytest.mark.slow
@needs_postgres
def test_postgres_work_before_the_window_is_not_in_its_deltas(postgres: PostgresService) -> None:
    pg = new_database(postgres, "idle")
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (x int)")
        before = inserted(pg)
        insert_rows(conn, K)
        wait_until(lambda: inserted(pg) >= before + K, timeout_s=STATS_TIMEOUT_S)
        with BackendTelemetry.for_cell(postgres=pg).window() as figures:
            pass
    got = figures["postgres"]
    counters = {k: got[k] for k in telemetry_module.PG_COUNTERS if k in got}
    assert counters and set(counters.values()) == {0}, counters
    assert got["xids"] == 0
    assert "reader_in_database" not in got


@pytest.mark.slow
@needs_postgres
def test_postgres_connections_peak_is_sampled_during_the_window(
    postgres: PostgresService, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = new_database(postgres, "conns")
    seen: list[int] = []
    original = telemetry_module._PostgresReader._connections

    def spy(reader: Any, conn: psycopg.Connection) -> tuple[int, int]:
        total, busy = original(reader, conn)
        seen.append(total)
        return total, busy

    monkeypatch.setattr(telemetry_module, "CONNECTIONS_INTERVAL_S", 0.05)
    monkeypatch.setattr(telemetry_module._PostgresReader, "_connections", spy)
    with BackendTelemetry.for_cell(postgres=pg).window() as figures:
        conns = [psycopg.connect(pg.url) for _ in range(3)]
        mark = len(seen)
        wait_until(lambda: 3 in seen[mark:], timeout_s=10)
        for conn in conns:
            conn.close()
        mark = len(seen)
        wait_until(lambda: 0 in seen[mark:], timeout_s=10)
    assert figures["postgres"]["connections"] == 0
    assert figures["postgres"]["connections_peak"] == 3


@pytest.mark.slow
@needs_postgres
def test_postgres_reader_falls_back_to_the_cell_database(postgres: PostgresService) -> None:
    """A user who may connect to the cell's database only (as on some external servers)."""
    pg = new_database(postgres, "narrow")
    with admin(postgres) as conn:
        conn.execute("DROP ROLE IF EXISTS narrow")
        conn.execute("CREATE ROLE narrow LOGIN PASSWORD 'narrow-pw'")
        conn.execute("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
    try:
        narrow = dataclasses.replace(pg, user="narrow", password="narrow-pw")
        with BackendTelemetry.for_cell(postgres=narrow).window() as figures:
            pass
    finally:
        with admin(postgres) as conn:
            conn.execute("GRANT CONNECT ON DATABASE postgres TO PUBLIC")
    got = figures["postgres"]
    assert "error" not in got, got
    assert got["reader_in_database"] is True
    assert got["connections"] == 0  # its own connection is left out


@pytest.mark.slow
@needs_redis
def test_redis_xadds_in_the_window_show_as_commands_and_stream_length(
    redis_server: RedisService,
) -> None:
    r = redis_server
    client = redis.Redis(host=r.host, port=r.port, db=r.db)
    try:
        client.ping()  # connected before the window: its handshake is not the window's
        with BackendTelemetry.for_cell(redis=r).window() as figures:
            for i in range(K):
                client.xadd("test-events", {"i": i})
        got = figures["redis"]
        assert got["commands"] == {"xadd": K}
        assert got["commands_total"] == K
        assert got["streams"]["test-events"] == K
        assert got["used_memory_mb"] > 0
        assert got["shared_server"] is False
        assert per_item(figures, K)["redis_commands_per_item"] == 1.0
    finally:
        client.flushdb()
        client.close()


@pytest.mark.slow
@needs_redis
def test_redis_idle_window_has_no_commands(redis_server: RedisService) -> None:
    with BackendTelemetry.for_cell(redis=redis_server).window() as figures:
        pass
    assert figures["redis"]["commands"] == {}
    assert figures["redis"]["commands_total"] == 0


@pytest.mark.slow
@needs_redis
def test_redis_streams_are_bounded_and_sharing_is_said(redis_server: RedisService) -> None:
    r = redis_server
    external = dataclasses.replace(r, info=ServiceInfo(provider="external"))
    client = redis.Redis(host=r.host, port=r.port, db=r.db)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(MAX_STREAMS + 10):
            pipe.xadd(f"stream-{i:03}", {"i": i})
        pipe.execute()
        with BackendTelemetry.for_cell(redis=external).window() as figures:
            pass
        got = figures["redis"]
        assert len(got["streams"]) == MAX_STREAMS
        assert got["streams_truncated"] is True
        assert got["shared_server"] is True
    finally:
        client.flushdb()
        client.close()


def test_sqlite_file_that_grows_shows_its_size(tmp_path: Path) -> None:
    path = tmp_path / "prefect.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE blobs (b BLOB)")
        with BackendTelemetry.for_cell(sqlite_path=path).window() as figures, conn:
            conn.executemany("INSERT INTO blobs VALUES (?)", [(b"x" * 4096,)] * 512)
        got = figures["sqlite"]
        assert got["db_mb"] + got["wal_mb"] >= 2  # 2 MB written, in the file or its WAL
        assert got["wal_mb"] > 0
    finally:
        conn.close()


def test_unreachable_backends_give_errors_not_exceptions(tmp_path: Path) -> None:
    port = free_port()
    info = ServiceInfo(provider="local")
    pg = PostgresService("127.0.0.1", port, "prefect", "s3cret-pw", "prefect", info)
    r = RedisService("127.0.0.1", port, 0, info, password="s3cret-pw")
    tele = BackendTelemetry.for_cell(pg, r, tmp_path / "missing.db")
    with tele.window() as figures:
        pass
    assert set(figures) == {"postgres", "redis", "sqlite"}
    for backend, got in figures.items():
        assert set(got) == {"error"}, (backend, got)
        assert "s3cret" not in got["error"]


def test_the_block_s_exception_goes_through_and_figures_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "prefect.db"
    path.write_bytes(b"\0" * 1024 * 1024)
    with (
        pytest.raises(KeyboardInterrupt),
        BackendTelemetry.for_cell(sqlite_path=path).window() as figures,
    ):
        raise KeyboardInterrupt
    assert figures == {"sqlite": {"db_mb": 1.0, "wal_mb": 0.0}}


def test_no_backends_no_figures() -> None:
    with BackendTelemetry.for_cell().window() as figures:
        pass
    assert figures == {}


def test_per_item() -> None:
    figures = {
        "postgres": {"xact_commit": 90, "xact_rollback": 10, "tup_inserted": 300, "xids": 80},
        "redis": {"commands": {"xadd": 30, "xreadgroup": 20}},
        "sqlite": {"db_mb": 1.0, "wal_mb": 0.0},
    }
    assert per_item(figures, 10) == {
        "postgres_xact_per_item": 10.0,
        "postgres_rows_written_per_item": 30.0,
        "postgres_write_xact_per_item": 8.0,
        "redis_commands_per_item": 5.0,
    }
    assert per_item(figures, 0) == {}
    assert per_item({"postgres": {"error": "down"}, "redis": {"error": "down"}}, 5) == {}
