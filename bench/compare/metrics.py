"""The gated figures, one row each. `METRICS` is what `compare --fail-on` can name (its grammar
and its error message), what `compare` and the report's baseline test, and the baseline's
columns: a new gated figure is one row here (its name, which way is better, its unit, how to
read it from an endpoint's, a scenario's and a step's measurement).

`readings` reads every row from each measurement of a result: an endpoint at one level, a
scenario at one level, a scenario's step at that level. A row a measurement has no value for
(a step has no rate, a measurement without successes no latency) is left out of it. The
figures of a `summed` row (rates) also add up to a cell's total.

It imports no numpy or scipy, so the command line can read it cheaply (for --fail-on's help).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from bench.results import EndpointResult, LatencyMs, Result, ScenarioResult, StepResult

TOTAL = "total"  # the figure of a cell's summed rows, over its endpoints and scenarios


@dataclass(frozen=True)
class Metric:
    """One gated figure: how it is named, which way is better, its unit, how it is read."""

    name: str
    better: Literal["higher", "lower"]
    unit: str
    endpoint: Callable[[EndpointResult], float | None]
    scenario: Callable[[ScenarioResult], float | None]
    step: Callable[[StepResult], float | None] | None = None
    summed: bool = False  # a cell's total is the sum over its endpoints and scenarios

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
        subject: str, c: int, step: str | None, read: Mapping[str, float | None], sat: bool
    ) -> None:
        values = {name: value for name, value in read.items() if value is not None}
        found.setdefault((subject, c, step), Reading(subject, c, step, values, sat))

    for ep in result.endpoints:
        read = {m.name: m.endpoint(ep) for m in METRICS.values()}
        add(ep.name, ep.concurrency, None, read, ep.client_saturated)
    for sc in result.scenarios:
        read = {m.name: m.scenario(sc) for m in METRICS.values()}
        add(sc.name, sc.concurrency, None, read, sc.client_saturated)
        for step in sc.steps:
            read = {m.name: m.step(step) for m in METRICS.values() if m.step is not None}
            add(sc.name, sc.concurrency, step.name, read, sc.client_saturated)
    return list(found.values())
