"""Server adapters by name: which class runs each server of bench.servers.specs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.config.run import Options
from bench.core.errors import ConfigError
from bench.servers.adapter import ServerAdapter, ServerOption
from bench.servers.python import PythonServer
from bench.servers.specs import load_servers
from bench.servers.zig import ZigServer

# Servers that need more than their spec; any other (a servers.toml one) is a ServerAdapter.
ADAPTERS: dict[str, type[ServerAdapter]] = {
    "python": PythonServer,
    "python-scaled": PythonServer,
    "zig": ZigServer,
}


def server_options() -> dict[str, tuple[ServerOption, ...]]:
    """Each adapter's own command-line options, by server name."""
    return {name: cls.options for name, cls in ADAPTERS.items() if cls.options}


def server_settings() -> tuple[type[Options], ...]:
    """The settings the servers add to a run, each model once."""
    return tuple(dict.fromkeys([ServerAdapter.settings, *(a.settings for a in ADAPTERS.values())]))


def make_server(
    name: str, options: Mapping[str, Any] | None = None, servers_file: Path | None = None
) -> ServerAdapter:
    """The adapter for server `name`, as built in and as `servers_file` describes or changes it.

    `options`: values of command-line options by `ServerOption.dest`; only those this server
    declares, and that were given (not None), reach it.
    `servers_file` None: $BENCH_SERVERS_FILE, else ./servers.toml if there is one. ConfigError
    for an unknown name or a bad servers file.
    """
    specs = load_servers(servers_file)
    if name not in specs:
        raise ConfigError(f"unknown server {name!r} (known: {', '.join(specs)})")
    adapter = ADAPTERS.get(name) or ADAPTERS.get(specs[name].extends or "", ServerAdapter)
    own = {o.dest for o in adapter.options}
    given = {k: v for k, v in (options or {}).items() if k in own and v is not None}
    return adapter(specs[name], **given)
