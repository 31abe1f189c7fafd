"""The load engine: sends one request again and again and measures what comes back
(a `bench.results.Measurement`).

`measure()` is the entry point. The engine's worker processes are started on first use and
reused; `shutdown()` stops them early (they are also stopped at exit, and when the caller is
interrupted during a measurement); `worker_pids()` lists them.
"""

from bench.engine.measure import choose_procs, measure
from bench.engine.model import (
    UNIQUE_TOKEN,
    EngineRequest,
    LoadSpec,
    Target,
    decode_histogram,
    new_histogram,
)
from bench.engine.pool import EngineError, shutdown, worker_pids

__all__ = [
    "UNIQUE_TOKEN",
    "EngineError",
    "EngineRequest",
    "LoadSpec",
    "Target",
    "choose_procs",
    "decode_histogram",
    "measure",
    "new_histogram",
    "shutdown",
    "worker_pids",
]
