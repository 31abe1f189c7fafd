"""Run ids: the folder a run's results go in. Standard library only (noxfile.py uses it)."""

from __future__ import annotations

import re
import secrets
import time

# A run id names a folder: no path separators, no leading dot, a length any filesystem takes.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def new_run_id() -> str:
    """A run id that sorts by time and does not collide: 20261126T164000Z-3f2a."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
