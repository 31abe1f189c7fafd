"""The load engine: sends one request again and again and measures what comes back
(`measure()`, a `bench.results.Measurement`), or runs a scenario, a chain of steps, with many
virtual users (`measure_scenario()`, a `bench.results.ScenarioMeasurement`), or several
scenarios at once, each with its own users (`measure_together()`), or requests to several
servers at once, each by an engine process on CPUs of its own (`measure_duet()`).

The engine's worker processes are started on first use and reused; `shutdown()` stops them
early (they are also stopped at exit, and when the caller is interrupted during a measurement);
`worker_pids()` lists them.
"""

from bench.engine.measure import (
    choose_procs,
    measure,
    measure_duet,
    measure_scenario,
    measure_together,
)
from bench.engine.model import (
    UNIQUE_TOKEN,
    EngineRequest,
    LoadSpec,
    Target,
    decode_histogram,
    new_histogram,
)
from bench.engine.pool import EngineError, shutdown, worker_pids
from bench.engine.scenario import Scenario, StepFailed, VirtualUser, run_once

__all__ = [
    "UNIQUE_TOKEN",
    "EngineError",
    "EngineRequest",
    "LoadSpec",
    "Scenario",
    "StepFailed",
    "Target",
    "VirtualUser",
    "choose_procs",
    "decode_histogram",
    "measure",
    "measure_duet",
    "measure_scenario",
    "measure_together",
    "new_histogram",
    "run_once",
    "shutdown",
    "worker_pids",
]
