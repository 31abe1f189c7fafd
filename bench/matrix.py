"""The matrix: which servers, databases and brokers exist, and their cells.

Standard library only: noxfile.py imports it to parametrize its sessions.
"""

from __future__ import annotations

import itertools

SERVERS = ("python", "zig")
DBS = ("sqlite", "postgres")
BROKERS = ("memory", "redis")
REFERENCE_SERVER = "python"


def cells() -> list[tuple[str, str, str]]:
    """Every (server, db, broker), the embedded default (python, sqlite, memory) first."""
    return list(itertools.product(SERVERS, DBS, BROKERS))
