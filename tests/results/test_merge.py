"""Tests of the one merge of a measurement (bench.results.merge), by the rules the schema declares
beside each field (bench.results.combine): across the engine's processes (bench.engine.measure,
fed shares as its processes make them, no process started) and across a cell's repetitions."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from hdrh.histogram import HdrHistogram
from pydantic import BaseModel

from bench.engine.measure import merge as merge_shares
from bench.engine.measure import merge_scenarios
from bench.engine.model import LoadSpec, new_histogram
from bench.engine.scenario import ScenarioShare, StepShare
from bench.engine.worker import ShareResult
from bench.results import (
    Delivery,
    EndpointResult,
    LatencyMs,
    Measurement,
    ScenarioMeasurement,
    ScenarioResult,
    ServerInfo,
    StepResult,
    Timing,
)
from bench.results.combine import MODES, Combine, Mode
from bench.results.merge import latency_summary, merge, rules

SHAPES = [
    Measurement,
    EndpointResult,
    StepResult,
    Timing,
    Delivery,
    LatencyMs,
    ScenarioMeasurement,
    ScenarioResult,
    ServerInfo,
]
CLOSED = LoadSpec(concurrency=4, duration_s=2.0, warmup_s=0.0)


def hist_of(values_ms: list[float]) -> HdrHistogram:
    hist = new_histogram()
    for value in values_ms:
        hist.record_value(round(value * 1000))
    return hist


def hdr_bytes(values_ms: list[float]) -> bytes:
    """A µs histogram of `values_ms`, encoded as an engine process reports it."""
    return hist_of(values_ms).encode()


def share(**changes: Any) -> ShareResult:
    fields: dict[str, Any] = {
        "requests": 4,
        "errors": {},
        "hdr": hdr_bytes([10.0] * 4),
        "cpu_s": 0.4,
        "wall_s": 2.0,
        "late_sends": 0,
        "lagging_sends": 0,
        "intended_sends": 0,
        "slices": [1, 1, 1, 1],
    }
    return ShareResult(**(fields | changes))


def scenario_share(**changes: Any) -> ScenarioShare:
    steps = {"create": StepShare(requests=2, hdr=hdr_bytes([5.0, 5.0]))}
    fields: dict[str, Any] = {
        "completed": 2,
        "failed": {},
        "hdr": hdr_bytes([20.0, 20.0]),
        "steps": steps,
        "step_count": 2,
        "cpu_s": 0.2,
        "wall_s": 2.0,
        "late_starts": 0,
        "lagging_starts": 0,
        "intended_starts": 0,
        "problems": [],
        "counts": {"flow_runs": 2},
        "slices": [1, 1],
    }
    return ScenarioShare(**(fields | changes))


def scenario_result(**changes: Any) -> ScenarioResult:
    fields: dict[str, Any] = {
        "name": "flow run",
        "concurrency": 1,
        "duration_s": 5.0,
        "completed": 10,
        "per_s": 2.0,
        "duration_ms": None,
    }
    return ScenarioResult(**(fields | changes))


# The declarations


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.__name__)
def test_every_field_of_every_shape_declares_how_it_merges(
    shape: type[BaseModel], mode: Mode
) -> None:
    assert rules(shape, mode).keys() == shape.model_fields.keys()


def test_the_fields_that_merge_differently_across_processes_and_repetitions() -> None:
    def differing(shape: type[BaseModel]) -> dict[str, tuple[object, object]]:
        processes, repetitions = rules(shape, "processes"), rules(shape, "repetitions")
        return {
            name: (processes[name], repetitions[name])
            for name in processes
            if processes[name] != repetitions[name]
        }

    window = (Combine.FIRST, Combine.SUM)
    rate = (Combine.SUM, Combine.MEAN)
    common = {
        "duration_s": window,
        "engine_procs": (Combine.COUNT, Combine.FIRST),
        "rate_held": (Combine.GIVEN, Combine.ALL),
    }
    assert differing(Measurement) == common | {
        "rps": rate,
        "rps_slices": (Combine.SLICES, Combine.CONCAT),
    }
    assert differing(ScenarioMeasurement) == common | {
        "per_s": rate,
        "per_s_slices": (Combine.SLICES, Combine.CONCAT),
    }
    assert differing(StepResult) == differing(Timing) == differing(Delivery) == {}


def test_a_field_without_a_rule_is_refused() -> None:
    class Undeclared(BaseModel):
        count: Annotated[int, Combine.SUM]
        total: int

    with pytest.raises(TypeError, match=r"Undeclared.total must declare one merge rule"):
        merge([Undeclared(count=1, total=2)], "repetitions")


def test_what_the_caller_gives_must_be_exactly_the_given_fields() -> None:
    part = Measurement(concurrency=1, requests=1, duration_s=1.0, rps=1.0, latency_ms=None)
    with pytest.raises(TypeError, match=r"needs \['rate_held'\] given"):
        merge([part], "processes")
    with pytest.raises(TypeError, match="needs \\[\\] given"):
        merge([part], "repetitions", given={"rate_held": True})
    assert merge([part], "processes", given={"rate_held": False}).rate_held is False


# Across the engine's processes


def test_shares_add_up_losslessly() -> None:
    m = merge_shares(
        [
            share(errors={"503": 1}, requests=5, problems=["a", "b"], slices=[1, 2, 1, 0]),
            share(
                hdr=hdr_bytes([30.0] * 4),
                errors={"timeout": 2, "503": 1},
                requests=7,
                cpu_s=1.0,
                problems=["b", "c"],
                slices=[1, 1, 2, 0],
            ),
        ],
        CLOSED,
    )
    assert (m.requests, m.errors) == (12, {"503": 2, "timeout": 2})
    assert list(m.errors) == ["503", "timeout"]  # sorted, as written before
    assert m.rps == pytest.approx(8 / 2.0)
    assert m.rps_slices == pytest.approx([2 * 2.0, 3 * 2.0, 3 * 2.0, 0.0])  # slices of 0.5 s
    added = hist_of([10.0] * 4 + [30.0] * 4)
    assert m.latency_ms == latency_summary(added)
    assert m.hdr is not None and HdrHistogram.decode(m.hdr).get_total_count() == 8
    assert m.client_cpu_s_per_request == pytest.approx(1.4 / 12)  # the processes' CPU / requests
    assert (m.engine_procs, m.concurrency, m.duration_s) == (2, 4, 2.0)
    assert m.problems == ["a", "b", "c"]
    assert (m.offered_rps, m.late_sends, m.rate_held, m.client_saturated) == (
        None,
        None,
        None,
        False,
    )


def test_shares_slices_of_different_lengths_are_none_and_one_busy_process_saturates() -> None:
    m = merge_shares([share(slices=[1, 1, 1]), share(cpu_s=1.9, wall_s=2.0)], CLOSED)
    assert m.rps_slices is None
    assert m.client_saturated


def test_a_process_without_responses_adds_no_cpu_per_request() -> None:
    silent = share(requests=0, hdr=None, cpu_s=0.1, slices=[0, 0, 0, 0])
    m = merge_shares([share(), silent], CLOSED)
    assert m.client_cpu_s_per_request == pytest.approx(0.4 / 4)
    assert m.latency_ms == latency_summary(hist_of([10.0] * 4))


def test_open_model_verdict_is_the_engines_from_the_processes_totals() -> None:
    spec = LoadSpec(concurrency=4, duration_s=2.0, warmup_s=0.0, rate=4.0)
    # each process alone: 1 of 50 sends late (2%: not held); together 1 of 100 (held)
    on_time = share(late_sends=0, intended_sends=50)
    late = share(late_sends=1, intended_sends=50)
    m = merge_shares([on_time, late], spec)
    assert (m.offered_rps, m.late_sends, m.rate_held) == (4.0, 1, True)
    lagging = share(lagging_sends=5, intended_sends=50, problems=[f"p{i}" for i in range(10)])
    m = merge_shares([on_time, lagging], spec)
    assert m.rate_held is False and m.client_saturated
    assert m.problems[0].startswith("the engine sent 5 of 100 requests late")
    assert m.problems[1:] == [f"p{i}" for i in range(9)]


def test_scenario_shares_merge_step_by_step() -> None:
    first = scenario_share(
        steps={
            "create": StepShare(requests=2, hdr=hdr_bytes([5.0, 5.0])),
            "poll": StepShare(requests=1, errors={"503": 1}),
        },
        step_count=3,
        cpu_s=0.3,
        failed={"poll": 1},
        timings={"claimed": hdr_bytes([7.0]), "running": None},
    )
    second = scenario_share(
        steps={"poll": StepShare(requests=3, hdr=hdr_bytes([9.0] * 3))},
        step_count=3,
        cpu_s=0.9,
        timings={"claimed": hdr_bytes([8.0, 8.0])},
    )
    m = merge_scenarios([first, second], CLOSED)
    assert [s.name for s in m.steps] == ["create", "poll"]  # as first seen
    create, poll = m.steps
    assert (poll.requests, poll.errors, poll.successes) == (4, {"503": 1}, 3)
    assert poll.latency_ms == latency_summary(hist_of([9.0] * 3))
    assert create.latency_ms == latency_summary(hist_of([5.0, 5.0]))
    assert m.client_cpu_s_per_step == pytest.approx(1.2 / 6)  # the processes' CPU / steps
    assert (m.completed, m.failed, m.per_s, m.counts) == (4, {"poll": 1}, 2.0, {"flow_runs": 4})
    assert m.duration_ms == latency_summary(hist_of([20.0] * 4))
    claimed, running = m.timings
    assert (claimed.name, claimed.count, running.name, running.count) == (
        "claimed",
        3,
        "running",
        0,
    )
    assert claimed.latency_ms == latency_summary(hist_of([7.0, 8.0, 8.0]))
    assert running.latency_ms is None and running.hdr is None
    assert (m.lag_probes, m.lag_unresolved, m.lag_ms) == (None, None, None)  # not probed


def test_probed_scenario_shares_add_their_lags() -> None:
    first = scenario_share(lag_hdr=hdr_bytes([100.0]), lag_probes=1, lag_unresolved=0)
    second = scenario_share(lag_probes=0, lag_unresolved=2)
    m = merge_scenarios([first, second], CLOSED, probed=True)
    assert (m.lag_probes, m.lag_unresolved) == (1, 2)
    assert m.lag_ms == latency_summary(hist_of([100.0]))


# Across repetitions


def endpoint(**changes: Any) -> EndpointResult:
    fields: dict[str, Any] = {
        "name": "GET health",
        "method": "GET",
        "path": "/health",
        "concurrency": 1,
        "requests": 10,
        "duration_s": 2.0,
        "rps": 5.0,
        "latency_ms": None,
    }
    return EndpointResult(**(fields | changes))


def test_the_same_parts_merge_by_each_modes_rule() -> None:
    parts = [endpoint(rps=4.0, rps_slices=[4.0, 4.0]), endpoint(rps=6.0, rps_slices=[5.0, 7.0])]
    across_processes = merge(parts, "processes", given={"rate_held": None})
    assert (across_processes.rps, across_processes.duration_s) == (10.0, 2.0)
    assert across_processes.rps_slices == [9.0, 11.0]
    assert across_processes.engine_procs == 2
    repeated = merge(parts, "repetitions")
    assert (repeated.rps, repeated.duration_s) == (5.0, 4.0)
    assert repeated.rps_slices == [4.0, 4.0, 5.0, 7.0]


def test_repetitions_weigh_client_cpu_per_step_by_steps() -> None:
    def run(steps: int, cpu_per_step: float) -> ScenarioResult:
        return scenario_result(
            steps=[StepResult(name="create", requests=steps, latency_ms=None)],
            client_cpu_s_per_step=cpu_per_step,
        )

    merged = merge([run(1, 1.0), run(3, 2.0)], "repetitions")
    # (1 × 1.0 + 3 × 2.0) / 4 steps, as the engine merges its processes; the plain mean was 1.5
    assert merged.client_cpu_s_per_step == pytest.approx(1.75)
    assert merged.step_count == 4


def test_repetitions_weigh_client_cpu_per_request_by_requests() -> None:
    parts = [
        endpoint(requests=1, client_cpu_s_per_request=1.0),
        endpoint(requests=3, client_cpu_s_per_request=2.0),
        endpoint(requests=0, client_cpu_s_per_request=None),  # measured nothing: weighs nothing
    ]
    assert merge(parts, "repetitions").client_cpu_s_per_request == pytest.approx(1.75)
    missing = [parts[0], endpoint(requests=3, client_cpu_s_per_request=None)]
    assert merge(missing, "repetitions").client_cpu_s_per_request is None


def test_repetitions_weigh_backend_work_per_flow_run_by_flow_runs() -> None:
    merged = merge(
        [
            scenario_result(
                counts={"flow_runs": 10},
                backend_per_flow_run={"postgres_xact_per_item": 4.0, "redis_commands_per_item": 9},
            ),
            scenario_result(
                counts={"flow_runs": 30}, backend_per_flow_run={"postgres_xact_per_item": 8.0}
            ),
            scenario_result(counts={}, backend_per_flow_run=None),  # a run that read none
        ],
        "repetitions",
    )
    assert merged.backend_per_flow_run == {
        "postgres_xact_per_item": pytest.approx((10 * 4.0 + 30 * 8.0) / 40),
        "redis_commands_per_item": 9,
    }
    assert merge([scenario_result()] * 2, "repetitions").backend_per_flow_run is None


def test_repetitions_average_server_figures_and_sum_delivery() -> None:
    merged = merge(
        [
            scenario_result(
                server_cpu_cores=1.0,
                other_cpu_cores=0.2,
                server_rss_peak_mb=100.0,
                telemetry={"postgres": {"xact_commit": 5}},
                delivery={"flow_runs": Delivery(sent=10, recorded=9, lost=1)},
                rate_held=True,
            ),
            scenario_result(
                server_cpu_cores=2.0,
                other_cpu_cores=0.4,
                server_rss_peak_mb=80.0,
                delivery={
                    "task_runs": Delivery(sent=5, recorded=5, lost=0),
                    "flow_runs": Delivery(sent=10, recorded=10, lost=0),
                },
                rate_held=False,
            ),
        ],
        "repetitions",
    )
    assert merged.server_cpu_cores == pytest.approx(1.5)
    assert merged.other_cpu_cores == pytest.approx(0.3)  # the first repetition's, before
    assert merged.server_rss_peak_mb == 100.0
    assert merged.telemetry is None
    assert merged.delivery == {
        "flow_runs": Delivery(sent=20, recorded=19, lost=1),
        "task_runs": Delivery(sent=5, recorded=5, lost=0),
    }
    assert merged.rate_held is False


def test_a_count_some_repetitions_lack_is_none() -> None:
    probed = scenario_result(lag_probes=3, lag_unresolved=1)
    unprobed = scenario_result()
    assert merge([probed, probed], "repetitions").lag_probes == 6
    merged = merge([probed, unprobed], "repetitions")
    # lag_probes was the probed ones' sum, lag_unresolved None: one rule for both now
    assert (merged.lag_probes, merged.lag_unresolved) == (None, None)


def test_without_every_histogram_summaries_merge_weighted_and_the_histogram_is_dropped() -> None:
    hist = hist_of([10.0] * 3)
    with_hdr = Timing(
        name="claimed",
        count=3,
        latency_ms=latency_summary(hist),
        hdr=hist.encode().decode("ascii"),
    )
    summary_only = Timing(
        name="claimed",
        count=1,
        latency_ms=LatencyMs(min=1.0, mean=30.0, p50=30.0, p90=30.0, p99=30.0, p999=30.0, max=90.0),
    )
    merged = merge([with_hdr, summary_only], "repetitions")
    assert merged.hdr is None and merged.count == 4
    assert merged.latency_ms is not None and with_hdr.latency_ms is not None
    assert merged.latency_ms.p50 == pytest.approx((3 * with_hdr.latency_ms.p50 + 30.0) / 4)
    assert (merged.latency_ms.min, merged.latency_ms.max) == (1.0, 90.0)
    nothing = Timing(name="claimed", count=0, latency_ms=None)
    assert merge([with_hdr, nothing], "repetitions").hdr == with_hdr.hdr  # nothing measured
