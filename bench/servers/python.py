"""The Python Prefect server from PyPI, run from the same environment as prefect-bench."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys

from bench.servers.base import ServerAdapter, ServerSetup

# Every setting that moves a part of the server from memory to Redis (DESIGN.md section 4):
# leaving one out silently keeps that part in memory.
_REDIS_MODULES = {
    "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
    "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
}


class PythonServer(ServerAdapter):
    """`prefect server start` with the UI, analytics and access log off, for a fair measure."""

    name = "python"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("prefect") is None:
            return (
                "prefect is not installed in this environment: "
                "pip install prefect prefect-redis (nox sessions do this)"
            )
        return None

    def version(self) -> str | None:
        try:
            return importlib.metadata.version("prefect")
        except importlib.metadata.PackageNotFoundError:
            return None

    def info(self) -> dict[str, str]:
        try:
            return {"prefect_redis_version": importlib.metadata.version("prefect-redis")}
        except importlib.metadata.PackageNotFoundError:
            return {}

    def command(self, port: int, setup: ServerSetup) -> list[str]:
        argv = [sys.executable, "-m", "prefect", "server", "start"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        if setup.no_services:
            argv.append("--no-services")
        return argv

    def environment(self, port: int, setup: ServerSetup) -> dict[str, str]:
        env = {
            "PREFECT_HOME": str(setup.datadir / "prefect-home"),
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # the access log alone costs ~16% of throughput
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        if setup.db == "postgres":
            if setup.postgres is None:
                raise ValueError("a postgres cell needs a provisioned database")
            pg = setup.postgres
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
                f"postgresql+asyncpg://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{pg.database}"
            )
        else:
            sqlite_path = setup.datadir / "prefect.db"
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{sqlite_path}"
        if setup.broker == "redis":
            if setup.redis is None:
                raise ValueError("a redis cell needs a provisioned redis")
            r = setup.redis
            env |= _REDIS_MODULES
            env |= {
                "PREFECT_REDIS_MESSAGING_HOST": r.host,
                "PREFECT_REDIS_MESSAGING_PORT": str(r.port),
                "PREFECT_REDIS_MESSAGING_DB": str(r.db),
                "PREFECT_REDIS_WORKER_CLEANUP_QUEUE_HOST": r.host,
                "PREFECT_REDIS_WORKER_CLEANUP_QUEUE_PORT": str(r.port),
                # docket keeps its own keys: the next logical db keeps them apart
                "PREFECT_SERVER_DOCKET_URL": r.url(db=r.db + 1),
            }
            if r.password:
                env["PREFECT_REDIS_MESSAGING_PASSWORD"] = r.password
        return env
