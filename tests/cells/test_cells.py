"""Whole cells of the python server on every db × broker, through each service provider; and
what starts a cell: which cells the matrix chooses, their command line and run id.

The backends must really be used: a postgres cell stores its rows in the provisioned database,
a redis cell moves messages through Redis, and a memory cell leaves Redis alone.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from bench.cells.commands import RUN_ID, cell_argv, new_run_id
from bench.cells.matrix import chosen
from bench.cells.runner import CellRun, run_cell
from bench.cells.settings import pinned
from bench.cli import build_parser
from bench.config.run import RunConfig
from bench.core.errors import ConfigError
from bench.core.ownership import Labels
from bench.core.process import wait_until
from bench.results import Result
from bench.services.base import PostgresService, RedisService
from bench.services.docker import DockerProvider
from bench.services.external import DB_PREFIX, POSTGRES_ENV, REDIS_ENV
from bench.services.local import LocalProvider

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

# sqlite × memory, which touches neither, is every other test's cell; sqlite × redis shows
# that sqlite leaves PostgreSQL alone, postgres × memory that memory leaves Redis alone.
CELLS = [("sqlite", "redis"), ("postgres", "memory"), ("postgres", "redis")]


def run(
    cell_run: Callable[..., CellRun],
    progress: Callable[..., RecordingProgress],
    db: str,
    broker: str,
    provider: str,
    check: Callable[[], None],
) -> Result:
    """A short python cell; `check` runs after the last of its 6 measurements, while the
    server and its services still run."""
    run = cell_run(
        "python", db, broker, duration_s=0.3, warmup_s=0.1, concurrency=[1], provider=provider
    )
    return run_cell(run, progress(after=6, action=check))


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    with LocalProvider().postgres(tmp_path_factory.mktemp("pg"), Labels("cells", "pg")) as pg:
        yield pg


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisService]:
    with LocalProvider().redis(tmp_path_factory.mktemp("redis"), Labels("cells", "r")) as r:
        yield r


def cell_databases(pg: PostgresService) -> list[str]:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "%",)
        ).fetchall()
    return [name for (name,) in rows]


def stream_writes(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


@pytest.mark.slow
@pytest.mark.parametrize(("db", "broker"), CELLS)
def test_cell_really_uses_its_backends(
    cell_run: Callable[..., CellRun],
    progress: Callable[..., RecordingProgress],
    monkeypatch: pytest.MonkeyPatch,
    postgres: PostgresService,
    redis_server: RedisService,
    db: str,
    broker: str,
) -> None:
    monkeypatch.setenv(POSTGRES_ENV, postgres.url)
    monkeypatch.setenv(REDIS_ENV, redis_server.url())
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=redis_server.db)
    client.config_resetstat()
    seen: dict[str, object] = {}

    def inspect_backends() -> None:
        databases = cell_databases(postgres)
        seen["databases"] = databases
        if databases:
            (name,) = databases
            with psycopg.connect(postgres.url.rsplit("/", 1)[0] + "/" + name) as conn:
                seen["flow_runs"] = conn.execute("SELECT count(*) FROM flow_run").fetchone()[0]
        if broker == "redis":
            # events reach Redis in batches: poll until the first stream write shows
            wait_until(lambda: stream_writes(client) > 0, timeout_s=60, interval_s=0.2)
        seen["stream_writes"] = stream_writes(client)
        seen["keys"] = client.dbsize()

    try:
        result = run(cell_run, progress, db, broker, "external", inspect_backends)
    finally:
        client.close()
    assert result.status == "ok", result.error
    assert {k: v.provider for k, v in result.services.items()} == (
        {"postgres": "external"} if db == "postgres" else {}
    ) | ({"redis": "external"} if broker == "redis" else {})
    if db == "postgres":
        assert len(seen["databases"]) == 1  # type: ignore[arg-type]
        assert seen["flow_runs"] >= 2  # type: ignore[operator]  # fixture run + created ones
    else:
        assert seen["databases"] == []
    if broker == "redis":
        assert seen["stream_writes"] > 0 and seen["keys"] > 0  # type: ignore[operator]
    else:
        assert seen["stream_writes"] == 0 and seen["keys"] == 0
    assert cell_databases(postgres) == []  # dropped at the end


def _docker_reason() -> str | None:
    return DockerProvider.unavailable_reason("postgres") or DockerProvider.unavailable_reason(
        "redis"
    )


# One cell per provider, the one that needs both its services: every cell on the external
# provider is test_cell_really_uses_its_backends', on the local one
# tests/test_servers_scaled.py's, each service on each provider is test_services_*'s.
@pytest.mark.slow
@pytest.mark.parametrize(("db", "broker"), [("postgres", "redis")])
@pytest.mark.parametrize(
    "provider",
    [
        pytest.param(
            "docker",
            marks=pytest.mark.skipif(
                _docker_reason() is not None, reason=f"no docker here: {_docker_reason()}"
            ),
        ),
    ],
)
def test_every_cell_runs_on_each_provider(
    tmp_path: Path,
    cell_run: Callable[..., CellRun],
    progress: Callable[..., RecordingProgress],
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
    db: str,
    broker: str,
) -> None:
    monkeypatch.delenv(POSTGRES_ENV, raising=False)
    monkeypatch.delenv(REDIS_ENV, raising=False)
    result = run(cell_run, progress, db, broker, provider, lambda: None)
    assert result.status == "ok", result.error
    assert len(result.endpoints) == 6
    for info in result.services.values():
        assert info.provider == provider and info.version
    logs = {p.name for p in (tmp_path / result.run_id / result.cell.name).iterdir()}
    assert "server.log" in logs
    assert ("postgres.log" in logs) == (db == "postgres")


# -- what starts a cell ------------------------------------------------------------------------


@pytest.mark.parametrize("round_deadline", [None, 1767225600.5])
def test_a_cells_command_line_is_what_run_reads(
    tmp_path: Path, round_deadline: float | None
) -> None:
    """The command the matrix's rounds and nox's cell sessions start (bench.cells.commands),
    read by `run`'s own parser: the cell, where its result goes, and the options for every
    cell after the cell's own."""
    argv = cell_argv(
        "/venv/bin/python",
        "zig",
        "postgres",
        "redis",
        run_id="20261126T164000Z-3f2a",
        out=tmp_path,
        version="3.9.1",
        json_path=tmp_path / "status.json",
        args=["--duration", "2"],
        round_deadline=round_deadline,
    )
    assert argv[:4] == ["/venv/bin/python", "-m", "bench", "run"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.server, args.db, args.broker) == ("run", "zig", "postgres", "redis")
    assert (args.run_id, args.out, args.json) == (
        "20261126T164000Z-3f2a",
        tmp_path,
        tmp_path / "status.json",
    )
    assert (args.prefect_version, args.duration_s) == ("3.9.1", 2.0)
    assert (args.one_repetition, args.deadline) == (round_deadline is not None, round_deadline)


def test_a_cell_of_the_installed_prefect_and_no_copy_says_neither(tmp_path: Path) -> None:
    argv = cell_argv("python", "python", "sqlite", "memory", run_id="r", out=tmp_path)
    assert "--prefect-version" not in argv and "--json" not in argv
    args = build_parser().parse_args(argv[3:])
    assert args.prefect_version is None and args.json is None and not args.one_repetition


def test_a_new_run_id_starts_with_its_time_and_is_one_run_accepts() -> None:
    run_id = new_run_id()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", run_id), run_id
    made = dt.datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - made).total_seconds()) < 60
    assert RUN_ID.match(run_id)
    assert build_parser().parse_args(["run", "--run-id", run_id]).run_id == run_id


def test_the_matrix_chooses_cells_by_server_db_and_broker() -> None:
    assert chosen(None, servers=["zig"], dbs=["postgres"]) == [
        ("zig", "postgres", "memory", ""),
        ("zig", "postgres", "redis", ""),
    ]
    # versions: a cell per version for the servers that run the environment's Prefect
    assert chosen(None, ["3.4.25", "3.9.1"], ["python", "zig"], ["sqlite"], ["memory"]) == [
        ("python", "sqlite", "memory", "3.4.25"),
        ("python", "sqlite", "memory", "3.9.1"),
        ("zig", "sqlite", "memory", ""),
    ]
    assert len(chosen(None)) == 12
    with pytest.raises(ConfigError, match=r"unknown server 'nginx' \(known: python, "):
        chosen(None, servers=["python", "nginx"])


def test_the_server_and_the_load_are_pinned_apart_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last quarter of the usable cores (at least one) for the load, the rest for the
    server; never by hand's or --no-pin's or a --url's server."""
    for usable, server, client in (
        ({0, 1}, [0], [1]),
        ({0, 1, 2, 3, 4, 5, 6, 7}, [0, 1, 2, 3, 4, 5], [6, 7]),
        ({3}, None, None),  # one core: nothing to split
    ):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=usable: cpus)
        config = pinned(RunConfig())
        assert (config.server_cpus, config.client_cpus) == (server, client), usable
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    for config in (
        RunConfig(no_pin=True),
        RunConfig(client_cpus=[1]),
        RunConfig(url="http://127.0.0.1:4200/api"),
    ):
        assert pinned(config) == config
