"""Workloads by name."""

from bench.config.run import Options
from bench.core.errors import ConfigError
from bench.workloads.base import Endpoint, ScenarioWorkload, Workload
from bench.workloads.events import EVENTS
from bench.workloads.flow_runs import FLOW_RUNS
from bench.workloads.lifecycle import LIFECYCLE
from bench.workloads.mixed import MIXED
from bench.workloads.seed import HEALTH, SEED
from bench.workloads.ui import UI
from bench.workloads.workers import WORKERS

# In this order as --workload's choices; the report draws the tables the workloads' results add
# (ScenarioWorkload.report) in this order too.
WORKLOADS: dict[str, Workload | ScenarioWorkload] = {
    w.name: w for w in (SEED, LIFECYCLE, FLOW_RUNS, EVENTS, WORKERS, UI, MIXED, HEALTH)
}

# The settings the workloads add to a run (bench.config.run.Options), each model once.
OPTIONS: tuple[type[Options], ...] = tuple(
    dict.fromkeys(
        w.options for w in WORKLOADS.values() if isinstance(w, ScenarioWorkload) and w.options
    )
)

__all__ = ["OPTIONS", "WORKLOADS", "Endpoint", "ScenarioWorkload", "Workload", "get_workload"]


def get_workload(name: str) -> Workload | ScenarioWorkload:
    """The workload called `name`; ConfigError for an unknown one."""
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ConfigError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})") from None
