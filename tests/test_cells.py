"""Whole cells of the python server on every db × broker, through each service provider.

The backends must really be used: a postgres cell stores its rows in the provisioned database,
a redis cell moves messages through Redis, and a memory cell leaves Redis alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
import redis

from bench.cells.runner import CellRun, run_cell
from bench.core.ownership import Labels
from bench.core.process import wait_until
from bench.results import Result
from bench.services.base import PostgresService, RedisService
from bench.services.docker import DockerProvider
from bench.services.external import DB_PREFIX, POSTGRES_ENV, REDIS_ENV
from bench.services.local import LocalProvider

if TYPE_CHECKING:
    from tests.conftest import RecordingProgress

pytestmark = pytest.mark.slow

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
