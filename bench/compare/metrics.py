"""The gated figures, one row each. `METRICS` is what `compare --fail-on` can name (its grammar
and its error message), what `compare` and the report's baseline test, and the baseline's
columns: a new gated figure is one row here (its name, which way is better, its unit, how to
read it from an endpoint's, a scenario's and a step's measurement).

`readings` reads every row from each measurement of a result: an endpoint at one level, a
scenario at one level, a scenario's step at that level. A row a measurement has no value for
(a step has no rate, a measurement without successes no latency, a wall-clock cell no
instructions) is left out of it. The figures of a `summed` row (rates) also add up to a cell's
total. A row read `per_block` (instructions, from a --cost cell) gives its blocks' values, each
a sample of its own (see bench.compare.change), and their mean as its value.

It imports no numpy or scipy, so the command line can read it cheaply (for --fail-on's help).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bench.results import Cost, EndpointResult, LatencyMs, Result, ScenarioResult, StepResult
from bench.results.schema import SERVICES_STEP

TOTAL = "total"  # the figure of a cell's summed rows, over its endpoints and scenarios


@dataclass(frozen=True)
class Metric:
    """One gated figure: how it is named, which way is better, its unit, how it is read."""

    name: str
    better: Literal["higher", "lower"]
    unit: str
    # a value, or (per_block) each counted block's value
    endpoint: Callable[[EndpointResult], float | Sequence[float] | None]
    scenario: Callable[[ScenarioResult], float | Sequence[float] | None]
    step: Callable[[StepResult], float | Sequence[float] | None] | None = None
    summed: bool = False  # a cell's total is the sum over its endpoints and scenarios
    per_block: bool = False  # read from a cost cell's blocks (bench.cost), one sample each

    @property
    def higher_is_better(self) -> bool:
        return self.better == "higher"

    @property
    def text(self) -> str:
        """How help and error messages name it: "rps (/s, higher is better)"."""
        return f"{self.name} ({self.unit}, {self.better} is better)"


def _quantile(latency: LatencyMs | None, pick: Literal["p50", "p99"]) -> float | None:
    if latency is None:
        return None
    return latency.p50 if pick == "p50" else latency.p99


def _blocks(cost: Cost | None) -> list[float] | None:
    return list(cost.block_per_request) if cost is not None else None


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        # successful requests per second; a scenario's: completed scenarios per second
        Metric("rps", "higher", "/s", lambda ep: ep.rps, lambda sc: sc.per_s, summed=True),
        # of successful requests; a scenario's: of its completed runs, start to end
        Metric(
            "p50",
            "lower",
            "ms",
            lambda ep: _quantile(ep.latency_ms, "p50"),
            lambda sc: _quantile(sc.duration_ms, "p50"),
            lambda step: _quantile(step.latency_ms, "p50"),
        ),
        Metric(
            "p99",
            "lower",
            "ms",
            lambda ep: _quantile(ep.latency_ms, "p99"),
            lambda sc: _quantile(sc.duration_ms, "p99"),
            lambda step: _quantile(step.latency_ms, "p99"),
        ),
        # what the server executed per request (per scenario, per step), under callgrind
        Metric(
            "instructions",
            "lower",
            "instructions/request",
            lambda ep: _blocks(ep.cost),
            lambda sc: _blocks(sc.cost),
            lambda step: _blocks(step.cost),
            per_block=True,
        ),
    )
}


@dataclass(frozen=True)
class Reading:
    """The gated figures of one measurement: an endpoint or a scenario at one level, or one
    step of a scenario at that level."""

    subject: str  # the endpoint's or the scenario's name
    concurrency: int
    step: str | None
    values: Mapping[str, float]  # metric name → value
    saturated: bool  # the load generator was saturated while measuring it
    # a per_block metric's name → its blocks' values (their mean is its value)
    blocks: Mapping[str, list[float]] = field(default_factory=dict)

    def samples(self, metric: str) -> list[float]:
        """The values a test of `metric` sees from this measurement: its blocks, or its
        value."""
        return list(self.blocks.get(metric) or [self.values[metric]])

    @property
    def name(self) -> str:
        """As `compare` names it: "GET flow c=4", "flow run c=4 create flow_run"."""
        name = f"{self.subject} c={self.concurrency}"
        return name if self.step is None else f"{name} {self.step}"


def readings(result: Result) -> list[Reading]:
    """Every measurement of `result` with the METRICS it has, endpoints first; of two
    measurements of one endpoint (or scenario, or step) at one level the first one counts."""
    found: dict[tuple[str, int, str | None], Reading] = {}

    def add(
        subject: str,
        c: int,
        step: str | None,
        read: Mapping[str, float | Sequence[float] | None],
        sat: bool,
    ) -> None:
        values: dict[str, float] = {}
        blocks: dict[str, list[float]] = {}
        for name, value in read.items():
            if isinstance(value, Sequence):
                if value:
                    blocks[name] = list(value)
                    values[name] = statistics.fmean(value)
            elif value is not None:
                values[name] = value
        found.setdefault((subject, c, step), Reading(subject, c, step, values, sat, blocks))

    for ep in result.endpoints:
        read = {m.name: m.endpoint(ep) for m in METRICS.values()}
        add(ep.name, ep.concurrency, None, read, ep.client_saturated)
    for sc in result.scenarios:
        read = {m.name: m.scenario(sc) for m in METRICS.values()}
        add(sc.name, sc.concurrency, None, read, sc.client_saturated)
        for step in sc.steps:
            read = {m.name: m.step(step) for m in METRICS.values() if m.step is not None}
            add(sc.name, sc.concurrency, step.name, read, sc.client_saturated)
        if sc.services_cost is not None:  # --cost-services: beside the steps, per run
            read = {"instructions": _blocks(sc.services_cost)}
            add(sc.name, sc.concurrency, SERVICES_STEP, read, sc.client_saturated)
    return list(found.values())
