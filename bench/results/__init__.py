"""The result of one cell of one run: its schema (`schema`, with the machine's state in
`machine_state`; each measurement field declares beside itself how parts of it combine,
`combine`, and `merge` is the one merge the engine and the report use), its files (`files`:
atomic writes with secrets redacted, reading every schema version this version knows) and its
provenance (`provenance`).

Everything is re-exported here: `from bench.results import Result, write_result`."""

from bench.results.files import load_result, new_run_id, redact, result_path, utc_now, write_result
from bench.results.machine_state import MachineState, OtherProcess, OtherUsage
from bench.results.provenance import environment, resolution
from bench.results.schema import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    Cell,
    Cost,
    Delivery,
    EndpointKey,
    EndpointResult,
    Environment,
    LatencyMs,
    Measurement,
    Preload,
    RepeatState,
    Resolution,
    Result,
    ScenarioMeasurement,
    ScenarioResult,
    ServerInfo,
    ServiceInfo,
    Soak,
    SoakWindow,
    Status,
    StepResult,
    SweepPoint,
    SweepResult,
    Timing,
)

__all__ = [
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "Cell",
    "Cost",
    "Delivery",
    "EndpointKey",
    "EndpointResult",
    "Environment",
    "LatencyMs",
    "MachineState",
    "Measurement",
    "OtherProcess",
    "OtherUsage",
    "Preload",
    "RepeatState",
    "Resolution",
    "Result",
    "ScenarioMeasurement",
    "ScenarioResult",
    "ServerInfo",
    "ServiceInfo",
    "Soak",
    "SoakWindow",
    "Status",
    "StepResult",
    "SweepPoint",
    "SweepResult",
    "Timing",
    "environment",
    "load_result",
    "new_run_id",
    "redact",
    "resolution",
    "result_path",
    "utc_now",
    "write_result",
]
