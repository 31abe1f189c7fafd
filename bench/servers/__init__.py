"""Server adapters, by name: what to run for each implementation under test.

Every server is described as data (bench.servers_config): python and zig are built in
(bench/servers/builtin.toml), more come from a servers.toml; their adapters are chosen here.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import ConfigError
from bench.servers.base import RunningServer, ServerAdapter, ServerSetup, start_server
from bench.servers.custom import SpecServer
from bench.servers.python import PythonServer
from bench.servers.zig import ZigServer
from bench.servers_config import load_servers, server_names

__all__ = [
    "RunningServer",
    "ServerAdapter",
    "ServerSetup",
    "make_server",
    "server_names",
    "start_server",
]


def make_server(
    name: str,
    *,
    zig_binary: Path | None = None,
    zig_src: Path | None = None,
    servers_file: Path | None = None,
) -> ServerAdapter:
    """The adapter for server `name`, as built in and as `servers_file` describes or changes it.

    `servers_file` None: $BENCH_SERVERS_FILE, else ./servers.toml if there is one. ConfigError
    for an unknown name or a bad servers file.
    """
    specs = load_servers(servers_file)
    if name not in specs:
        raise ConfigError(f"unknown server {name!r} (known: {', '.join(specs)})")
    if name == "python":
        return PythonServer(specs[name])
    if name == "zig":
        return ZigServer(zig_binary, zig_src, spec=specs[name])
    return SpecServer(specs[name])
