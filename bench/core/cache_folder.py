"""The folder prefect-bench keeps what is slow to make in: zig builds, seeded databases."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "BENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """$BENCH_CACHE_DIR, else $XDG_CACHE_HOME/prefect-bench, else ~/.cache/prefect-bench."""
    if given := os.environ.get(CACHE_ENV):
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "prefect-bench"
