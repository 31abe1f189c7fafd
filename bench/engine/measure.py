"""measure(), measure_scenario(), measure_together() and measure_duet(): split a load spec
over engine processes, run them, merge what they counted."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any, TypeVar

from hdrh.histogram import HdrHistogram

from bench.core.errors import ConfigError
from bench.engine.model import EngineRequest, LoadSpec, Target
from bench.engine.pool import EngineJob, get_pool
from bench.engine.scenario import Scenario, ScenarioJob, ScenarioShare, TogetherJob
from bench.engine.worker import Job, ShareResult
from bench.results import Measurement, ScenarioMeasurement, StepResult, Timing
from bench.results.combine import PROBLEMS_KEPT
from bench.results.merge import merge as merge_parts

# Time between handing out the jobs and the first send: the workers connect meanwhile.
START_DELAY_S = 0.1
# Workers stop at the end of the window; allow this long for them to report back.
REPORT_GRACE_S = 30.0
# A process using this share of one core during the window was the limit.
SATURATED_CPU = 0.9
# Open model: achieved rate below this share of the offered rate, or more late sends than
# this share of the scheduled ones, means the rate was not held.
RATE_SHORTFALL = 0.95
LATE_SHARE = 0.01
# Automatic process count: one process per this many connections.
CONNS_PER_PROC = 32


def available_cpus(spec: LoadSpec) -> int:
    if spec.client_cpus:
        return len(spec.client_cpus)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_procs(spec: LoadSpec) -> int:
    """How many engine processes a spec gets.

    Explicit `engine_procs` is used as given (warning if above the cores available), but never more
    than the concurrency. Automatic (None): one process per 32 connections, at most a quarter
    of the usable cores (the server needs the rest) or, with `client_cpus`, one per CPU given
    -- so 1 process on small machines: one process drives some tens of thousands of requests
    per second (~80k/s against nginx, closed model), more than Prefect servers answer. A
    measurement where that was not enough says so with `client_saturated`; then set procs.
    """
    cores = available_cpus(spec)
    if spec.engine_procs is not None:
        if spec.engine_procs < 1:
            raise ConfigError(f"engine_procs must be at least 1, not {spec.engine_procs}")
        n = min(spec.engine_procs, spec.concurrency)
        if n > cores:
            warnings.warn(
                f"{n} engine processes on {cores} cores: they will compete for CPU",
                RuntimeWarning,
                stacklevel=3,
            )
        return n
    limit = cores if spec.client_cpus else cores // 4
    return max(1, min(math.ceil(spec.concurrency / CONNS_PER_PROC), limit, spec.concurrency))


def _check(work: EngineRequest | Scenario, spec: LoadSpec) -> None:
    try:
        pickle.dumps(work)
    except Exception as exc:
        raise ConfigError(
            f"the request or scenario must be picklable (module-level functions): {exc}"
        ) from exc
    if spec.concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, not {spec.concurrency}")
    times = (spec.duration_s, spec.warmup_s, spec.timeout_s, spec.rate or 1.0)
    if not all(math.isfinite(t) for t in times):
        raise ConfigError("duration, warmup, timeout and rate must be finite numbers")
    if spec.duration_s <= 0 or spec.warmup_s < 0:
        raise ConfigError("duration must be positive and warmup not negative")
    if spec.rate is not None and spec.rate <= 0:
        raise ConfigError(f"rate must be positive, not {spec.rate}")
    if spec.client_cpus is not None:
        allowed = os.sched_getaffinity(0)
        if not spec.client_cpus or not set(spec.client_cpus) <= allowed:
            raise ConfigError(
                f"client_cpus {spec.client_cpus} are not among the usable CPUs {sorted(allowed)}"
            )
    if spec.timeout_s <= 0:
        raise ConfigError(f"timeout must be positive, not {spec.timeout_s}")


def _split(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def _cpu_sets(cpus: tuple[int, ...] | None, n: int) -> list[set[int] | None]:
    """Pin process i to one CPU each when there are at least as many processes as CPUs,
    otherwise to its own slice of the CPUs."""
    if not cpus:
        return [None] * n
    if n >= len(cpus):
        return [{cpus[i % len(cpus)]} for i in range(n)]
    return [set(cpus[i::n]) for i in range(n)]


@dataclass(frozen=True)
class _Schedule:
    """When one measurement starts, when its window opens and closes, and its processes."""

    procs: int
    start_ns: int
    window_start_ns: int
    window_end_ns: int
    nonce: str

    @classmethod
    def plan(cls, spec: LoadSpec, load: object) -> _Schedule:
        """The schedule of a measurement of `load` (what the jobs carry: a request or
        scenarios), its processes started and holding it before the clock starts."""
        n = choose_procs(spec)
        get_pool().ensure(n, load)
        start = monotonic_ns() + int(START_DELAY_S * 1e9)
        w_start = start + int(spec.warmup_s * 1e9)
        return cls(n, start, w_start, w_start + int(spec.duration_s * 1e9), secrets.token_hex(4))

    def share(self, spec: LoadSpec, i: int) -> tuple[float | None, int]:
        """Process i's rate and start: the processes' schedules interleave."""
        if spec.rate is None:
            return None, self.start_ns
        return spec.rate / self.procs, self.start_ns + int(i * 1e9 / spec.rate)

    def run(
        self,
        jobs: Sequence[EngineJob],
        spec: LoadSpec,
        progress: Callable[[int], None] | None,
        cpus: Sequence[set[int] | None] | None = None,
    ) -> list[Any]:
        """Run the jobs, process i pinned to `cpus[i]` (default: spread over the spec's)."""
        give_up = self.window_end_ns + int(REPORT_GRACE_S * 1e9)
        cpus = cpus or _cpu_sets(spec.client_cpus, self.procs)
        return get_pool().run(jobs, cpus, progress, lambda: monotonic_ns() > give_up)


def measure(
    target: Target,
    request: EngineRequest,
    spec: LoadSpec,
    progress: Callable[[int], None] | None = None,
) -> Measurement:
    """Load `target` with `request` as `spec` says; failed requests are counted, not raised.

    `progress`, if given, is called from this thread about every 0.25 s with the number of
    responses counted so far in the window. Raises ConfigError for a bad spec and EngineError
    if an engine process fails; KeyboardInterrupt terminates the engine processes.
    """
    _check(request, spec)
    plan = _Schedule.plan(spec, request)
    conns = _split(spec.concurrency, plan.procs)
    jobs = []
    for i in range(plan.procs):
        rate, start = plan.share(spec, i)
        jobs.append(
            Job(
                target=target,
                request=request,
                spec=spec,
                connections=conns[i],
                rate=rate,
                start_ns=start,
                window_start_ns=plan.window_start_ns,
                window_end_ns=plan.window_end_ns,
                token_prefix=f"{plan.nonce}-{i}-".encode(),
            )
        )
    return merge(plan.run(jobs, spec, progress), spec)


def measure_duet(
    parts: Sequence[tuple[Target, EngineRequest, tuple[int, ...]]],
    spec: LoadSpec,
    progress: Callable[[int], None] | None = None,
) -> list[Measurement]:
    """Load each (target, request, cpus) of `parts` as `spec` says, all in one window: each
    part by one engine process of its own, pinned to its cpus (its server's, in a duet), with
    the whole spec (its concurrency, its rate). One measurement each, in order; `progress` gets
    the parts' responses together; errors as `measure`."""
    if len(parts) < 2:
        raise ConfigError("measure_duet measures two parts or more at once")
    for _, request, cpus in parts:
        _check(request, dataclasses.replace(spec, client_cpus=cpus))
    whole = dataclasses.replace(
        spec, concurrency=spec.concurrency * len(parts), engine_procs=len(parts), client_cpus=None
    )
    plan = _Schedule.plan(whole, [request for _, request, _ in parts])
    jobs = [
        Job(
            target=target,
            request=request,
            spec=spec,
            connections=spec.concurrency,
            rate=spec.rate,
            start_ns=plan.start_ns,
            window_start_ns=plan.window_start_ns,
            window_end_ns=plan.window_end_ns,
            token_prefix=f"{plan.nonce}-{i}-".encode(),
        )
        for i, (target, request, _) in enumerate(parts)
    ]
    shares = plan.run(jobs, spec, progress, [set(cpus) for _, _, cpus in parts])
    return [merge([share], spec) for share in shares]


def measure_scenario(
    target: Target,
    scenario: Scenario,
    spec: LoadSpec,
    progress: Callable[[int], None] | None = None,
) -> ScenarioMeasurement:
    """Run `scenario` with `spec.concurrency` virtual users (or `spec.rate` starts/s); failed
    steps and scenarios are counted, not raised. `progress` gets the scenarios completed so
    far in the window; errors as `measure`."""
    _check(scenario, spec)
    plan = _Schedule.plan(spec, scenario)
    users = _split(spec.concurrency, plan.procs)
    jobs = []
    for i in range(plan.procs):
        rate, start = plan.share(spec, i)
        jobs.append(
            ScenarioJob(
                target=target,
                scenario=scenario,
                spec=spec,
                users=users[i],
                rate=rate,
                start_ns=start,
                window_start_ns=plan.window_start_ns,
                window_end_ns=plan.window_end_ns,
                token_prefix=f"{plan.nonce}-{i}-",
            )
        )
    return merge_scenarios(plan.run(jobs, spec, progress), spec, scenario.probe is not None)


def measure_together(
    target: Target,
    parts: Sequence[tuple[Scenario, int]],
    spec: LoadSpec,
    progress: Callable[[int], None] | None = None,
    targets: Sequence[Target] | None = None,
) -> list[ScenarioMeasurement]:
    """Run each (scenario, users) of `parts` with its own virtual users, all in one window
    (closed model; `spec.concurrency` is ignored): one measurement each, in order. With
    `targets` (one per part), each part loads its own server: two servers measured at the
    same moments by the same event loops. `progress` gets the first scenario's completions;
    errors as `measure`."""
    if spec.rate is not None:
        raise ConfigError("scenarios measured together run in the closed model: no rate")
    if not parts:
        raise ConfigError("measure_together needs at least one scenario")
    if targets is not None and len(targets) != len(parts):
        raise ConfigError("measure_together: one target per part, or none")
    for scenario, users in parts:
        _check(scenario, dataclasses.replace(spec, concurrency=users))
    plan = _Schedule.plan(
        dataclasses.replace(spec, concurrency=sum(u for _, u in parts)), [s for s, _ in parts]
    )
    shares = [_split(users, plan.procs) for _, users in parts]
    jobs = [
        TogetherJob(
            tuple(
                ScenarioJob(
                    target=target if targets is None else targets[k],
                    scenario=scenario,
                    spec=spec,
                    users=shares[k][i],
                    rate=None,
                    start_ns=plan.start_ns,
                    window_start_ns=plan.window_start_ns,
                    window_end_ns=plan.window_end_ns,
                    token_prefix=f"{plan.nonce}-{i}-{k}-",
                )
                for k, (scenario, _) in enumerate(parts)
            )
        )
        for i in range(plan.procs)
    ]
    results = plan.run(jobs, spec, progress)
    return [
        merge_scenarios(
            [shares_of[k] for shares_of in results],
            dataclasses.replace(spec, concurrency=users),
            scenario.probe is not None,
        )
        for k, (scenario, users) in enumerate(parts)
    ]


@dataclass(frozen=True)
class _OpenModel:
    """Whether an open-model measurement held its rate, by the engine's two criteria: it
    achieved RATE_SHORTFALL of the rate, and at most LATE_SHARE of the scheduled sends (or
    starts) were late; and whether the engine itself fell behind (late with capacity free)."""

    lagging: int
    intended: int
    rate_held: bool
    engine_lagged: bool

    @classmethod
    def of(
        cls, spec: LoadSpec, *, waited: int, lagging: int, intended: int, achieved: int
    ) -> _OpenModel | None:
        """The verdict on the processes' totals; None in the closed model."""
        if spec.rate is None:
            return None
        late = waited + lagging
        intended = max(intended, 1)
        held = (
            achieved >= RATE_SHORTFALL * spec.rate * spec.duration_s
            and late <= LATE_SHARE * intended
        )
        return cls(lagging, intended, held, lagging > LATE_SHARE * intended)


_Measured = TypeVar("_Measured", Measurement, ScenarioMeasurement)


def _merged(parts: Sequence[_Measured], verdict: _OpenModel | None, lagged: str) -> _Measured:
    """The processes' shares, each in the result's shape, merged by the rules the schema
    declares across processes (losslessly: counts and histograms add), with the engine's
    verdict on the open model's rate, judged from counts the result does not keep. `lagged`
    says what the engine let slip (formatted with the late and the scheduled count)."""
    held = None if verdict is None else verdict.rate_held
    merged = merge_parts(parts, "processes", given={"rate_held": held})
    if verdict is None or not verdict.engine_lagged:
        return merged
    problem = lagged.format(verdict.lagging, verdict.intended)
    # The engine itself was the limit: the client saturated, said first.
    return merged.model_copy(
        update={"client_saturated": True, "problems": [problem, *merged.problems][:PROBLEMS_KEPT]}
    )


def merge(results: Sequence[ShareResult], spec: LoadSpec) -> Measurement:
    """The processes' shares of an endpoint as one measurement (`_merged`)."""
    verdict = _OpenModel.of(
        spec,
        waited=sum(r.late_sends for r in results),
        lagging=sum(r.lagging_sends for r in results),
        intended=sum(r.intended_sends for r in results),
        achieved=sum(r.requests for r in results),
    )
    return _merged(
        [_share(r, spec) for r in results],
        verdict,
        "the engine sent {} of {} requests late with a connection free: it could not hold the "
        "rate (more --engine-procs or another --client-cpus)",
    )


def _share(r: ShareResult, spec: LoadSpec) -> Measurement:
    """One process's share in the result's shape; its level, window and rate are the whole
    measurement's (the schema merges them as FIRST across processes). Its latency summary is
    left to the merge, which re-reads it from the histograms added up: one of a share's own
    would be thrown away."""
    return Measurement(
        concurrency=spec.concurrency,
        requests=r.requests,
        errors=r.errors,
        duration_s=spec.duration_s,
        rps=(r.requests - sum(r.errors.values())) / spec.duration_s,
        rps_slices=_slice_rates(r.slices, spec.duration_s),
        latency_ms=None,
        client_saturated=_saturated(r.cpu_s, r.wall_s),
        hdr=_text(r.hdr),
        problems=r.problems,
        client_cpu_s_per_request=r.cpu_s / r.requests if r.requests else None,
        engine_procs=1,
        offered_rps=spec.rate,
        late_sends=None if spec.rate is None else r.late_sends + r.lagging_sends,
    )


def merge_scenarios(
    results: Sequence[ScenarioShare], spec: LoadSpec, probed: bool = False
) -> ScenarioMeasurement:
    """The processes' shares of a scenario as one measurement (`_merged`); `probed`: the
    scenario measured lag (its counts are then given, 0 included)."""
    verdict = _OpenModel.of(
        spec,
        waited=sum(r.late_starts for r in results),
        lagging=sum(r.lagging_starts for r in results),
        intended=sum(r.intended_starts for r in results),
        achieved=sum(r.completed + sum(r.failed.values()) for r in results),
    )
    return _merged(
        [_scenario_share(r, spec, probed) for r in results],
        verdict,
        "the engine started {} of {} scenarios late",
    )


def _scenario_share(r: ScenarioShare, spec: LoadSpec, probed: bool) -> ScenarioMeasurement:
    """One process's share of a scenario in the result's shape, as `_share` (the summaries
    left to the merge)."""
    steps = [
        StepResult(
            name=name,
            requests=step.requests,
            errors=step.errors,
            latency_ms=None,
            hdr=_text(step.hdr),
            retries=step.retries,
            retry_s=step.retry_s,
        )
        for name, step in r.steps.items()
    ]
    timings = [
        Timing(
            name=name,
            count=0 if hdr is None else HdrHistogram.decode(hdr).get_total_count(),
            latency_ms=None,
            hdr=_text(hdr),
        )
        for name, hdr in r.timings.items()
    ]
    return ScenarioMeasurement(
        concurrency=spec.concurrency,
        duration_s=spec.duration_s,
        completed=r.completed,
        failed=r.failed,
        per_s=r.completed / spec.duration_s,
        per_s_slices=_slice_rates(r.slices, spec.duration_s),
        duration_ms=None,
        hdr=_text(r.hdr),
        steps=steps,
        client_saturated=_saturated(r.cpu_s, r.wall_s),
        client_cpu_s_per_step=r.cpu_s / r.step_count if r.step_count else None,
        engine_procs=1,
        offered_rps=spec.rate,
        late_starts=None if spec.rate is None else r.late_starts + r.lagging_starts,
        problems=r.problems,
        counts=r.counts,
        lag_ms=None,
        lag_hdr=_text(r.lag_hdr),
        lag_probes=r.lag_probes if probed else None,
        lag_unresolved=r.lag_unresolved if probed else None,
        timings=timings,
    )


def _saturated(cpu_s: float, wall_s: float) -> bool:
    return wall_s > 0 and cpu_s / wall_s >= SATURATED_CPU


def _slice_rates(slices: list[int] | None, duration_s: float) -> list[float] | None:
    """A process's successes in each equal slice of the window, as rates."""
    return None if slices is None else [n * len(slices) / duration_s for n in slices]


def _text(hdr: bytes | None) -> str | None:
    """A process's encoded histogram (never an empty one) as the result stores it."""
    return None if hdr is None else hdr.decode("ascii")
