"""The server adapters and start_server, against the real Python Prefect server."""

from pathlib import Path

import httpx
import psutil
import pytest

from bench.core.errors import ServerError
from bench.servers.adapter import ServerSetup
from bench.servers.python import PythonServer
from bench.servers.registry import make_server
from bench.servers.running import SCHEMA_CACHE_ENV, start_server
from bench.servers.zig import ZigServer


@pytest.mark.slow
def test_python_server_starts_healthy_and_stops_cleanly(tmp_path: Path) -> None:
    setup = ServerSetup(db="sqlite", broker="memory", logdir=tmp_path, datadir=tmp_path / "d")
    with start_server(make_server("python"), setup) as server:
        assert server.startup_s > 0
        assert httpx.get(f"{server.base_url}/health").json() is True
        # the UI is off: only the API answers
        assert httpx.get(f"http://127.0.0.1:{server.port}/").status_code == 404
        env = server.process.process.environ()
        assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith(
            str(tmp_path / "d/prefect.db")
        )
        assert env["PREFECT_SERVER_LOGGING_LEVEL"] == "WARNING"
        pids = [p.pid for p in server.process.tree()]
    assert server.exit_code in (0, -15)
    assert not [pid for pid in pids if psutil.pid_exists(pid)]
    assert (tmp_path / "server.log").exists()


class BrokenDatabase(PythonServer):
    """The real server, told to use a database it cannot open."""

    def environment(self, port: int, setup: ServerSetup) -> dict[str, str]:
        env = super().environment(port, setup)
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = "sqlite+aiosqlite:////nonexistent/dir/x.db"
        return env


@pytest.mark.slow
def test_a_server_that_fails_to_start_reports_its_log(tmp_path: Path) -> None:
    setup = ServerSetup(db="sqlite", broker="memory", logdir=tmp_path, datadir=tmp_path / "d")
    with (
        pytest.raises(ServerError, match="exited with code") as info,
        start_server(BrokenDatabase(), setup),
    ):
        pytest.fail("the server should not have started")
    # one line: the cause the log gives and where the log is; its last lines the details
    message = str(info.value)
    assert "\n" not in message and message.endswith(f"(log: {tmp_path / 'server.log'})")
    assert "OperationalError) unable to open database file" in message
    assert info.value.details.startswith(f"the last lines of {tmp_path / 'server.log'}:")


def test_python_environment_maps_redis_and_postgres(tmp_path: Path) -> None:
    from bench.results import ServiceInfo
    from bench.services.base import PostgresService, RedisService

    info = ServiceInfo(provider="local")
    setup = ServerSetup(
        db="postgres",
        broker="redis",
        logdir=tmp_path,
        datadir=tmp_path,
        postgres=PostgresService("127.0.0.1", 5433, "u", "pw", "db1", info),
        redis=RedisService("127.0.0.1", 6380, 2, info),
        no_services=True,
    )
    adapter = PythonServer()
    env = adapter.environment(1234, setup)
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://u:pw@127.0.0.1:5433/db1"
    )
    for key in (
        "PREFECT_SERVER_EVENTS_MESSAGING_BROKER",
        "PREFECT_SERVER_EVENTS_MESSAGING_CACHE",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
        "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE",
    ):
        assert env[key].startswith("prefect_redis.")
    assert env["PREFECT_REDIS_MESSAGING_PORT"] == "6380"
    assert env["PREFECT_REDIS_MESSAGING_DB"] == "2"
    assert env["PREFECT_SERVER_DOCKET_URL"] == "redis://127.0.0.1:6380/2"
    assert "--no-services" in adapter.command(1234, setup)


def test_zig_is_unavailable_without_a_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BENCH_ZIG_BINARY", raising=False)
    assert "--zig-binary" in (ZigServer().unavailable_reason() or "")
    missing = tmp_path / "prefect-server"
    assert "does not exist" in (ZigServer(binary=missing).unavailable_reason() or "")
    missing.write_text("#!/bin/sh\n")
    assert "not executable" in (ZigServer(binary=missing).unavailable_reason() or "")


@pytest.mark.slow
def test_a_sqlite_server_starts_on_the_schema_the_first_one_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(SCHEMA_CACHE_ENV, "1")
    started = []
    for i in range(2):
        setup = ServerSetup(
            db="sqlite", broker="memory", logdir=tmp_path, datadir=tmp_path / f"d{i}"
        )
        with start_server(make_server("python"), setup) as server:
            started.append(server.schema_cached)
            # the copy is a working database: a write and its read-back
            made = httpx.post(f"{server.base_url}/flows/", json={"name": f"schema-{i}"})
            assert made.status_code in (200, 201), made.text
            found = httpx.post(f"{server.base_url}/flows/filter", json={}).json()
            assert f"schema-{i}" in {f["name"] for f in found}
    assert started == [False, True]
    (kept,) = (tmp_path / "cache" / "schema").iterdir()
    assert kept.name.startswith("python-") and kept.suffix == ".db"
    assert not [p for p in kept.parent.iterdir() if p.name.startswith(".")]  # no partial copy
