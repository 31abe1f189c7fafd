"""What the backends did in a measurement window: PostgreSQL, Redis and SQLite counters read at
the window's edges, so that each cell shows the work behind its numbers (as TechEmpower's
verify mode counts queries).

A window's telemetry is a plain, JSON-ready dict with one entry per backend the cell uses:

    {"postgres": {"xact_commit": 9120, "tup_inserted": 4400, ..., "xids": 9050,
                  "wal_mb": 14.2, "connections": 5, "connections_peak": 9,
                  "busy_connections_peak": 4, "db_size_mb": 12.3, "shared_server": false},
     "redis": {"commands": {"xadd": 1300, ...}, "commands_total": 2700,
               "used_memory_mb": 2.1, "streams": {"events": 400}, "shared_server": false},
     "sqlite": {"db_mb": 1.2, "wal_mb": 4.0}}

A backend that cannot be read gives `{"error": "..."}` instead: telemetry never fails a cell.
It costs a few queries per window: one read at each edge, and for PostgreSQL a count of the
connections twice a second in between.

How far each figure can be trusted:
- PostgreSQL's `pg_stat_database` counters (xact_*, tup_*, blks_*, deadlocks, sessions) are the
  cell database's alone, but they lag: since PostgreSQL 15 each backend adds its counts to the
  shared statistics when a transaction ends, at most once a second, and a backend that goes
  idle with counts not yet added adds them up to 10 s later (PGSTAT_MIN_INTERVAL,
  PGSTAT_IDLE_INTERVAL). A window's delta therefore misses up to about the last second of each
  busy connection's work (and more for a connection that went idle: up to 10 s) and includes
  what was still pending from before the window; back-to-back windows pass it on to the next
  one. `xids` (transaction ids assigned: the transactions and subtransactions that wrote) and
  `wal_mb` are read live and exact, but they count the whole PostgreSQL server.
- Redis's `INFO commandstats` counts the whole Redis server (every db), live and exact; this
  module's own commands are left out.
- `shared_server` says the server is not the cell's own (the `external` provider): the
  server-wide figures (Redis commands, xids, wal_mb) include others' work.
- `connections` counts the client connections to the cell's database at the window's end;
  `connections_peak` and `busy_connections_peak` (not idle: running or in a transaction) the
  most seen in the samples.
- PostgreSQL is read from its `postgres` database, so that the reads are not in the cell's
  counters; where that database is closed to the cell's user, from the cell's database, and
  `reader_in_database: true` says that a few of the transactions counted are the reads.
- Sizes (database, WAL file, Redis memory, stream lengths) are read at the window's end.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import redis

from bench.results import redact
from bench.services.base import PostgresService, RedisService
from bench.services.external import ExternalProvider
from bench.services.kinds import POSTGRES, REDIS, PostgresLogin

Telemetry = dict[str, Any]

MB = 1024 * 1024
# A backend that does not answer must not stall the cell: give up on each read soon (2 s is
# the least connect timeout libpq accepts).
TIMEOUT_S = 2
CONNECTIONS_INTERVAL_S = 0.5
MAX_STREAMS = 50  # stream lengths reported, at most
MAX_SCANS = 20  # SCAN calls per window, at most (SCAN_COUNT keys each): bounded on a big db
SCAN_COUNT = 500

# pg_stat_database counters whose deltas a window reports, where the server has them
# (`sessions` is PostgreSQL 14+).
PG_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "tup_fetched",
    "tup_returned",
    "blks_read",
    "blks_hit",
    "deadlocks",
    "temp_files",
    "sessions",
)
# One statement, so one transaction and one fresh statistics snapshot (the connection is in
# autocommit: a snapshot lives until its transaction ends, so pg_stat_clear_snapshot() would
# change nothing). The txid_ spelling works on every supported version.
_PG_COUNTERS_SQL = """
SELECT to_jsonb(d), txid_snapshot_xmax(txid_current_snapshot()),
       (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint
FROM pg_stat_database d WHERE d.datname = %s
"""
# Client connections only (not autovacuum workers); our own is left out, in case it had to
# use the cell's database.
_PG_CONNECTIONS_SQL = """
SELECT count(*), count(*) FILTER (WHERE state <> 'idle')
FROM pg_stat_activity
WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


def _mb(n_bytes: float) -> float:
    return round(n_bytes / MB, 2)


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": redact(f"{type(exc).__name__}: {str(exc).strip()}")}


def _shared(info_provider: str) -> bool:
    """Whether a service's server may serve others than this cell."""
    return info_provider == ExternalProvider.name


class _Reader(ABC):
    """One backend over one window: `begin` reads its counters at the start, `end` returns
    the window's figures, `close` releases what `begin` opened (also after a failed begin)."""

    name: ClassVar[str]

    @abstractmethod
    def begin(self) -> None:
        """Read the counters at the window's start."""

    @abstractmethod
    def end(self) -> dict[str, Any]:
        """The window's figures: counter deltas since `begin`, sizes now."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and threads."""


class _PostgresReader(_Reader):
    name = "postgres"

    def __init__(self, service: PostgresService) -> None:
        self.service = service
        self._conn: psycopg.Connection | None = None
        self._in_cell_db = False
        self._start: tuple[dict[str, Any], int, int] = ({}, 0, 0)
        self._peaks = [0, 0]  # connections, busy connections
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _connect(self) -> psycopg.Connection:
        """A connection to the maintenance database, so that our reads do not count in the
        cell's statistics; to the cell's own database when that one is closed to us (a user
        of an external server may have no other)."""
        s = self.service
        options = {
            "options": f"-c statement_timeout={TIMEOUT_S * 1000}",
            "application_name": "prefect-bench telemetry",
        }
        try:
            login = PostgresLogin(s.host, s.port, s.user, s.password, "postgres", options)
            return POSTGRES.connect(login, TIMEOUT_S)
        except psycopg.OperationalError:
            self._in_cell_db = True
            login = PostgresLogin(s.host, s.port, s.user, s.password, s.database, options)
            return POSTGRES.connect(login, TIMEOUT_S)

    def _counters(self, conn: psycopg.Connection) -> tuple[dict[str, Any], int, int]:
        row = conn.execute(_PG_COUNTERS_SQL, (self.service.database,)).fetchone()
        if row is None:
            raise LookupError(f"no pg_stat_database row for {self.service.database}")
        stats, next_xid, wal_bytes = row
        return stats, int(next_xid), int(wal_bytes)

    def _connections(self, conn: psycopg.Connection) -> tuple[int, int]:
        row = conn.execute(_PG_CONNECTIONS_SQL, (self.service.database,)).fetchone()
        total, busy = row if row else (0, 0)
        self._peaks = [max(self._peaks[0], total), max(self._peaks[1], busy)]
        return total, busy

    def _sample_connections(self, conn: psycopg.Connection) -> None:
        while not self._stop.wait(CONNECTIONS_INTERVAL_S):
            # A missed sample only makes the peak less sure; the end read reports failures.
            with contextlib.suppress(psycopg.Error):
                self._connections(conn)

    def begin(self) -> None:
        conn = self._conn = self._connect()
        self._start = self._counters(conn)
        self._connections(conn)
        self._thread = threading.Thread(
            target=self._sample_connections, args=(conn,), name="pg-telemetry", daemon=True
        )
        self._thread.start()

    def end(self) -> dict[str, Any]:
        conn = self._conn
        assert conn is not None
        self._stop_sampling()
        stats, next_xid, wal_bytes = self._counters(conn)
        start_stats, start_xid, start_wal = self._start
        out: dict[str, Any] = {
            key: int(stats[key]) - int(start_stats.get(key) or 0)
            for key in PG_COUNTERS
            if stats.get(key) is not None
        }
        total, _ = self._connections(conn)
        size = conn.execute("SELECT pg_database_size(%s)", (self.service.database,)).fetchone()
        assert size is not None
        out |= {
            "xids": next_xid - start_xid,
            "wal_mb": _mb(wal_bytes - start_wal),
            "connections": total,
            "connections_peak": self._peaks[0],
            "busy_connections_peak": self._peaks[1],
            "db_size_mb": _mb(size[0]),
            "shared_server": _shared(self.service.info.provider),
        }
        if self._in_cell_db:  # our own reads (a few transactions) are in the counters
            out["reader_in_database"] = True
        return out

    def _stop_sampling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self._stop_sampling()
        if self._conn is not None:
            self._conn.close()


class _RedisReader(_Reader):
    name = "redis"

    def __init__(self, service: RedisService) -> None:
        self.service = service
        self._client: redis.Redis | None = None
        self._start: dict[str, int] = {}

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            s = self.service
            self._client = REDIS.client(
                s.host, s.port, db=s.db, password=s.password, timeout_s=TIMEOUT_S
            )
        return self._client

    def _calls(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {
            key.removeprefix("cmdstat_"): int(value["calls"])
            for key, value in stats.items()
            if isinstance(value, dict) and "calls" in value
        }

    def _streams(self) -> tuple[dict[str, int], bool]:
        """The lengths of the streams in the cell's db, at most MAX_STREAMS of them, and
        whether some were left out."""
        keys: list[bytes] = []
        cursor, scans = 0, 0
        while True:
            cursor, found = self.client.scan(cursor, count=SCAN_COUNT, _type="stream")
            keys.extend(found)
            scans += 1
            if cursor == 0 or len(keys) >= MAX_STREAMS or scans >= MAX_SCANS:
                break
        truncated = cursor != 0 or len(keys) > MAX_STREAMS
        keys = sorted(keys)[:MAX_STREAMS]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.xlen(key)
        lengths = pipe.execute()
        names = [k.decode("utf-8", "replace") for k in keys]
        return dict(zip(names, map(int, lengths), strict=True)), truncated

    def begin(self) -> None:
        self._start = self._calls()

    def end(self) -> dict[str, Any]:
        calls = self._calls()
        # Our own INFO at `begin` is counted (a command's stats are added once it has run);
        # the one just sent is not yet.
        calls["info"] = calls.get("info", 0) - 1
        commands = {
            name: n - self._start.get(name, 0)
            for name, n in sorted(calls.items())
            if n != self._start.get(name, 0)
        }
        memory = self.client.info("memory")
        streams, truncated = self._streams()
        out: dict[str, Any] = {
            "commands": commands,
            "commands_total": sum(commands.values()),
            "used_memory_mb": _mb(int(memory["used_memory"])),
            "streams": streams,
            "shared_server": _shared(self.service.info.provider),
        }
        if truncated:
            out["streams_truncated"] = True
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class _SqliteReader(_Reader):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def begin(self) -> None:
        """Nothing to read: sizes are taken at the end."""

    def end(self) -> dict[str, Any]:
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            wal_bytes = wal.stat().st_size
        except FileNotFoundError:  # no WAL (another journal mode, or truncated by a checkpoint)
            wal_bytes = 0
        return {"db_mb": _mb(self.path.stat().st_size), "wal_mb": _mb(wal_bytes)}

    def close(self) -> None:
        """Nothing to release."""


class BackendTelemetry:
    """Reads what a cell's backends did in each measurement window (`window()`)."""

    def __init__(self, readers: Sequence[Callable[[], _Reader]]) -> None:
        self._readers = readers

    @classmethod
    def for_cell(
        cls,
        postgres: PostgresService | None = None,
        redis: RedisService | None = None,
        sqlite_path: Path | None = None,
    ) -> BackendTelemetry:
        """Telemetry of the backends given; with none, each window's telemetry is empty."""
        readers: list[Callable[[], _Reader]] = []
        if postgres is not None:
            readers.append(lambda: _PostgresReader(postgres))
        if redis is not None:
            readers.append(lambda: _RedisReader(redis))
        if sqlite_path is not None:
            readers.append(lambda: _SqliteReader(sqlite_path))
        return cls(readers)

    @contextmanager
    def window(self) -> Iterator[Telemetry]:
        """Measure the block: the telemetry dict is filled in when the block ends, whatever
        way it ends; a backend that cannot be read gets `{"error": ...}`, never an exception."""
        telemetry: Telemetry = {}
        figures: dict[str, dict[str, Any]] = {}
        started: list[_Reader] = []
        # Every failure of a backend is data here (psycopg, redis, OS errors, an answer of an
        # unexpected shape): the cell's measurement must go on.
        for make in self._readers:
            reader = make()
            try:
                reader.begin()
                started.append(reader)
            except Exception as exc:
                figures[reader.name] = _error(exc)
                with contextlib.suppress(Exception):
                    reader.close()
        try:
            yield telemetry
        finally:
            for reader in started:
                try:
                    figures[reader.name] = reader.end()
                except Exception as exc:
                    figures[reader.name] = _error(exc)
                finally:
                    with contextlib.suppress(Exception):
                        reader.close()
            telemetry.update(sorted(figures.items()))


def per_item(telemetry: Telemetry, count: float) -> dict[str, float]:
    """The backends' work per item (a flow run, a request): `count` must be the items made over
    the telemetry's whole span (the engine's window, warmup included). Empty when count <= 0.

    `postgres_xact_per_item` counts the cell database's transactions (lagged, see above);
    `postgres_write_xact_per_item` the transactions that wrote (exact, server-wide).
    """
    if count <= 0:
        return {}
    out: dict[str, float] = {}
    pg = telemetry.get("postgres") or {}
    if "xact_commit" in pg:
        out["postgres_xact_per_item"] = (pg["xact_commit"] + pg.get("xact_rollback", 0)) / count
        rows = pg.get("tup_inserted", 0) + pg.get("tup_updated", 0) + pg.get("tup_deleted", 0)
        out["postgres_rows_written_per_item"] = rows / count
    if "xids" in pg:
        out["postgres_write_xact_per_item"] = pg["xids"] / count
    commands = (telemetry.get("redis") or {}).get("commands")
    if commands is not None:
        out["redis_commands_per_item"] = sum(commands.values()) / count
    return {key: round(value, 3) for key, value in out.items()}
