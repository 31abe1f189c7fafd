"""mixed: writes under reads. The flow-runs scenario's users and --readers users sending the ui
workload's reads, in the same windows (`ScenarioWorkload.beside`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from pydantic import Field

from bench.config.run import RunConfig, setting
from bench.workloads.flow_runs import FLOW_RUNS, FlowRunOptions
from bench.workloads.ui import UI

MIXED_NOTE = (
    "mixed: a level's writers (flow runs, beside its readers) and readers (the ui workload's "
    "reads one after another; each is a step) shared one window and one server: each has its "
    "own users and counts, the server's CPU is the window's."
)


class MixedOptions(FlowRunOptions):
    """mixed's settings: its readers (and the flow runs' --tasks)."""

    readers: Annotated[int, Field(ge=1)] = setting(
        "--readers",
        "R",
        measurement=True,
        default=2,
        description="mixed: users sending the ui workload's reads, beside each level's "
        "--concurrency flow-run users",
    )


def refuse(config: RunConfig) -> str | None:
    """The engine measures parts together in the closed model only."""
    if config.rate is not None:
        return "--rate: mixed runs its writers and readers in the closed model"
    return None


MIXED = replace(
    FLOW_RUNS,
    name="mixed",
    description="flow-runs and ui at once, each with its own users (--readers read)",
    beside=UI,
    report=replace(FLOW_RUNS.report, notes=(MIXED_NOTE,)),
    options=MixedOptions,
    refuse=refuse,
    beside_users=lambda config: MixedOptions.of(config).readers,
)
