"""Workloads by name."""

from bench.errors import ConfigError
from bench.workloads.base import Endpoint, Workload
from bench.workloads.lifecycle import LIFECYCLE
from bench.workloads.seed import HEALTH, SEED

WORKLOADS: dict[str, Workload] = {w.name: w for w in (SEED, LIFECYCLE, HEALTH)}

__all__ = ["WORKLOADS", "Endpoint", "Workload", "get_workload"]


def get_workload(name: str) -> Workload:
    """The workload called `name`; ConfigError for an unknown one."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ConfigError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})") from None
