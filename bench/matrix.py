"""The matrix: which servers, databases and brokers exist, and their cells.

Standard library only: noxfile.py imports it to parametrize its sessions.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from bench.servers_config import server_names

DBS = ("sqlite", "postgres")
BROKERS = ("memory", "redis")
REFERENCE_SERVER = "python"


def cells(servers_file: Path | None = None) -> list[tuple[str, str, str]]:
    """Every (server, db, broker): the built-in servers, then those of servers.toml.

    The embedded default (python, sqlite, memory) comes first.
    """
    return list(itertools.product(server_names(servers_file), DBS, BROKERS))
