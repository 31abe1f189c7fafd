"""Server adapters, by name: what to run for each implementation under test."""

from __future__ import annotations

from pathlib import Path

from bench.errors import ConfigError
from bench.matrix import SERVERS as SERVER_NAMES
from bench.servers.base import RunningServer, ServerAdapter, ServerSetup, start_server
from bench.servers.python import PythonServer
from bench.servers.zig import ZigServer

__all__ = [
    "SERVER_NAMES",
    "RunningServer",
    "ServerAdapter",
    "ServerSetup",
    "make_server",
    "start_server",
]


def make_server(name: str, *, zig_binary: Path | None = None) -> ServerAdapter:
    """The adapter for server `name`; ConfigError for an unknown name."""
    if name == "python":
        return PythonServer()
    if name == "zig":
        return ZigServer(zig_binary)
    raise ConfigError(f"unknown server {name!r} (known: {', '.join(SERVER_NAMES)})")
