"""The matrix: the cells, and their nox session ids.

Standard library only: noxfile.py imports it to parametrize its sessions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from bench.config.dimensions import BROKERS, DBS, DEFAULT_BROKER
from bench.servers.specs import server_names


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
