"""The Zig prefect-server: a binary the user points to."""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import cached_property
from pathlib import Path

from bench.servers.base import ServerAdapter, ServerSetup

BINARY_ENV = "BENCH_ZIG_BINARY"


class ZigServer(ServerAdapter):
    """Configured through its own PREFECT_DATABASE_* / PREFECT_BROKER_* variables."""

    name = "zig"

    def __init__(self, binary: Path | None = None) -> None:
        given = binary or os.environ.get(BINARY_ENV)
        self.binary = Path(given).expanduser().resolve() if given else None

    def unavailable_reason(self) -> str | None:
        if self.binary is None:
            return (
                f"no zig prefect-server binary given: pass --zig-binary PATH "
                f"or set {BINARY_ENV}=PATH"
            )
        if not self.binary.is_file():
            return f"the zig binary {self.binary} does not exist"
        if not os.access(self.binary, os.X_OK):
            return f"the zig binary {self.binary} is not executable (chmod +x it)"
        return None

    @cached_property
    def sha256(self) -> str | None:
        if self.binary is None or not self.binary.is_file():
            return None
        digest = hashlib.sha256()
        with open(self.binary, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def version(self) -> str | None:
        if self.binary is None:
            return None
        try:
            out = subprocess.run(
                [str(self.binary), "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if out.returncode == 0 and text else None

    def info(self) -> dict[str, str]:
        info = {"binary": str(self.binary)} if self.binary else {}
        if self.sha256:
            info["binary_sha256"] = self.sha256
        return info

    def command(self, port: int, setup: ServerSetup) -> list[str]:
        assert self.binary is not None, "unavailable_reason() is checked before starting"
        return [str(self.binary), *(["--no-services"] if setup.no_services else [])]

    def environment(self, port: int, setup: ServerSetup) -> dict[str, str]:
        env = {
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_DATABASE_BACKEND": setup.db,
            "PREFECT_BROKER_BACKEND": setup.broker,
        }
        if setup.db == "postgres":
            if setup.postgres is None:
                raise ValueError("a postgres cell needs a provisioned database")
            env["PREFECT_DATABASE_URL"] = setup.postgres.url
        else:
            env["PREFECT_DATABASE_PATH"] = str(setup.datadir / "prefect.db")
        if setup.broker == "redis":
            if setup.redis is None:
                raise ValueError("a redis cell needs a provisioned redis")
            r = setup.redis
            env |= {
                "PREFECT_REDIS_MESSAGING_HOST": r.host,
                "PREFECT_REDIS_MESSAGING_PORT": str(r.port),
                "PREFECT_REDIS_MESSAGING_DB": str(r.db),
                "REDIS_URL": r.url(),
            }
        return env
