"""The matrix: the cells, those a command asks for, and their nox session ids.

Standard library only: noxfile.py imports it to parametrize its sessions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from bench.config.dimensions import BROKERS, DBS, DEFAULT_BROKER
from bench.core.errors import ConfigError
from bench.servers.specs import server_names, versioned_server_names


def cells(servers: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """Every (server, db, broker) of `servers` (default: the built-in servers, then those of
    servers.toml; ConfigError for a bad servers.toml).

    The embedded default (python, sqlite, memory) comes first.
    """
    if servers is None:
        servers = server_names()
    return list(itertools.product(servers, DBS, BROKERS))


def session_params(server: str, db: str, broker: str, version: str = "") -> str:
    """The parameters of a cell's nox session as DESIGN.md section 9 spells them:
    `server='zig', db='postgres'` (memory broker), `server='zig', db='postgres', broker='redis'`,
    and `prefect='3.8.0'` last where a run compares Prefect versions.
    """
    words = f"server={server!r}, db={db!r}"
    if broker != DEFAULT_BROKER:
        words += f", broker={broker!r}"
    return f"{words}, prefect={version!r}" if version else words


def versioned_cells(
    cells: Sequence[tuple[str, str, str]], versions: Sequence[str], versioned: Sequence[str]
) -> list[tuple[str, str, str, str]]:
    """Each cell with the Prefect version it runs: one cell per version for the servers in
    `versioned` (those running the environment's Prefect) when several versions are compared;
    otherwise "" (the one installed)."""
    return [
        (server, db, broker, version)
        for server, db, broker in cells
        for version in (versions if len(versions) > 1 and server in versioned else [""])
    ]


def chosen(
    servers_file: Path | None,
    versions: Sequence[str] = (),
    servers: Sequence[str] = (),
    dbs: Sequence[str] = (),
    brokers: Sequence[str] = (),
) -> list[tuple[str, str, str, str]]:
    """The cells of the `servers`, `dbs` and `brokers` asked for (each: every one when none is),
    in the matrix's order, each with its Prefect `version` as `versioned_cells` gives them;
    ConfigError for a server neither built in nor in `servers_file`."""
    known = known_servers(servers_file, servers)
    wanted = [s for s in known if not servers or s in servers]
    return [
        (server, db, broker, version)
        for server, db, broker, version in versioned_cells(
            cells(wanted), versions, versioned_server_names(servers_file)
        )
        if db in (dbs or DBS) and broker in (brokers or BROKERS)
    ]


def known_servers(servers_file: Path | None, asked: Sequence[str] = ()) -> tuple[str, ...]:
    """Every server built in or in `servers_file`; ConfigError naming the first of those
    `asked` for that is neither, and the known ones."""
    known = server_names(servers_file)
    if unknown := sorted(set(asked) - set(known)):
        raise ConfigError(f"unknown server {unknown[0]!r} (known: {', '.join(known)})")
    return known
