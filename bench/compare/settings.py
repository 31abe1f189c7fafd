"""Every settings model of a run, gathered: RunConfig and the Options the workloads and the
server adapters add; and which of their settings make two results comparable (the fields each
declares a measurement setting, bench.config.run.setting)."""

from __future__ import annotations

from pydantic import BaseModel

from bench.config import run
from bench.config.run import RunConfig
from bench.servers.registry import server_settings
from bench.workloads import OPTIONS

MODELS: tuple[type[BaseModel], ...] = (RunConfig, *OPTIONS, *server_settings())


def measurement_fields() -> tuple[str, ...]:
    """Every measurement setting, in the order declared (RunConfig's first)."""
    return run.measurement_fields(MODELS)


def measurement_settings(config: RunConfig) -> dict[str, str]:
    """`config`'s measurement settings, field name → value as text ("5", "1,4,16", "none"):
    two configs measure alike exactly when these are equal. What `compare`, the report's
    series and its comparability warnings all read."""
    return run.measurement_settings(config, MODELS)
