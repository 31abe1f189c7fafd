"""mixed: writes under reads. The flow-runs scenario's users and --readers users sending the ui
workload's reads, in the same windows (`ScenarioWorkload.beside`)."""

from __future__ import annotations

from dataclasses import replace

from bench.workloads.flow_runs import FLOW_RUNS
from bench.workloads.ui import UI

MIXED_NOTE = (
    "mixed: a level's writers (flow runs, beside its readers) and readers (the ui workload's "
    "reads one after another; each is a step) shared one window and one server: each has its "
    "own users and counts, the server's CPU is the window's."
)

MIXED = replace(
    FLOW_RUNS,
    name="mixed",
    description="flow-runs and ui at once, each with its own users (--readers read)",
    beside=UI,
    report=replace(FLOW_RUNS.report, notes=(MIXED_NOTE,)),
)
