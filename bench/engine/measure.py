"""measure(), measure_scenario() and measure_together(): split a load spec over engine
processes, run them, merge what they counted."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import secrets
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any

from hdrh.histogram import HdrHistogram

from bench.core.errors import ConfigError
from bench.engine.model import EngineRequest, LoadSpec, Target, latency_summary, new_histogram
from bench.engine.pool import EngineJob, get_pool
from bench.engine.scenario import Scenario, ScenarioJob, ScenarioShare, TogetherJob
from bench.engine.worker import Job, ShareResult
from bench.results import Measurement, ScenarioMeasurement, StepResult, Timing

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
    def plan(cls, spec: LoadSpec) -> _Schedule:
        n = choose_procs(spec)
        get_pool().ensure(n)  # the first call spawns the processes: before the clock starts
        start = monotonic_ns() + int(START_DELAY_S * 1e9)
        w_start = start + int(spec.warmup_s * 1e9)
        return cls(n, start, w_start, w_start + int(spec.duration_s * 1e9), secrets.token_hex(4))

    def share(self, spec: LoadSpec, i: int) -> tuple[float | None, int]:
        """Process i's rate and start: the processes' schedules interleave."""
        if spec.rate is None:
            return None, self.start_ns
        return spec.rate / self.procs, self.start_ns + int(i * 1e9 / spec.rate)

    def run(
        self, jobs: Sequence[EngineJob], spec: LoadSpec, progress: Callable[[int], None] | None
    ) -> list[Any]:
        give_up = self.window_end_ns + int(REPORT_GRACE_S * 1e9)
        cpus = _cpu_sets(spec.client_cpus, self.procs)
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
    plan = _Schedule.plan(spec)
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
    plan = _Schedule.plan(spec)
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
) -> list[ScenarioMeasurement]:
    """Run each (scenario, users) of `parts` with its own virtual users, all in one window
    (closed model; `spec.concurrency` is ignored): one measurement each, in order. `progress`
    gets the first scenario's completions; errors as `measure`."""
    if spec.rate is not None:
        raise ConfigError("scenarios measured together run in the closed model: no rate")
    if not parts:
        raise ConfigError("measure_together needs at least one scenario")
    for scenario, users in parts:
        _check(scenario, dataclasses.replace(spec, concurrency=users))
    plan = _Schedule.plan(dataclasses.replace(spec, concurrency=sum(u for _, u in parts)))
    shares = [_split(users, plan.procs) for _, users in parts]
    jobs = [
        TogetherJob(
            tuple(
                ScenarioJob(
                    target=target,
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

    late: int
    lagging: int
    intended: int
    rate_held: bool
    engine_lagged: bool

    @classmethod
    def of(
        cls, spec: LoadSpec, *, waited: int, lagging: int, intended: int, achieved: int
    ) -> _OpenModel:
        assert spec.rate is not None
        late = waited + lagging
        intended = max(intended, 1)
        held = (
            achieved >= RATE_SHORTFALL * spec.rate * spec.duration_s
            and late <= LATE_SHARE * intended
        )
        return cls(late, lagging, intended, held, lagging > LATE_SHARE * intended)


def merge(results: Sequence[ShareResult], spec: LoadSpec) -> Measurement:
    """Add up the processes' counts and histograms (losslessly) into the result's shape."""
    hist = new_histogram()
    errors: dict[str, int] = {}
    problems: list[str] = []
    for r in results:
        if r.hdr is not None:
            hist.add(HdrHistogram.decode(r.hdr))
        for kind, count in r.errors.items():
            errors[kind] = errors.get(kind, 0) + count
        problems.extend(p for p in r.problems if p not in problems)
    requests = sum(r.requests for r in results)
    cpu_s = sum(r.cpu_s for r in results)
    saturated = any(r.wall_s > 0 and r.cpu_s / r.wall_s >= SATURATED_CPU for r in results)
    late: int | None = None
    rate_held: bool | None = None
    if spec.rate is not None:
        verdict = _OpenModel.of(
            spec,
            waited=sum(r.late_sends for r in results),
            lagging=sum(r.lagging_sends for r in results),
            intended=sum(r.intended_sends for r in results),
            achieved=requests,
        )
        late, rate_held = verdict.late, verdict.rate_held
        if verdict.engine_lagged:
            saturated = True
            problems.insert(
                0,
                f"the engine sent {verdict.lagging} of {verdict.intended} requests late with a "
                "connection free: it could not hold the rate (more --engine-procs or another "
                "--client-cpus)",
            )
    return Measurement(
        concurrency=spec.concurrency,
        requests=requests,
        errors=dict(sorted(errors.items())),
        duration_s=spec.duration_s,
        rps=(requests - sum(errors.values())) / spec.duration_s,
        rps_slices=_slice_rates([r.slices for r in results], spec.duration_s),
        latency_ms=latency_summary(hist),
        client_saturated=saturated,
        hdr=_encoded(hist),
        problems=problems[:10],
        client_cpu_s_per_request=cpu_s / requests if requests else None,
        engine_procs=len(results),
        offered_rps=spec.rate,
        late_sends=late,
        rate_held=rate_held,
    )


def _slice_rates(per_process: Sequence[list[int] | None], duration_s: float) -> list[float] | None:
    """The processes' slice counts added up, as rates (every process cuts the same window)."""
    if not per_process or any(
        slices is None or len(slices) != len(per_process[0] or ()) for slices in per_process
    ):
        return None
    totals = [sum(column) for column in zip(*per_process, strict=True)]
    return [n * len(totals) / duration_s for n in totals]


def merge_scenarios(
    results: Sequence[ScenarioShare], spec: LoadSpec, probed: bool = False
) -> ScenarioMeasurement:
    """Add up the processes' scenario counts and histograms (losslessly) into the result's
    shape; `probed`: the scenario measured lag (its counts are then given, 0 included)."""
    durations = new_histogram()
    lags = new_histogram()
    step_hists: dict[str, HdrHistogram] = {}
    step_requests: Counter[str] = Counter()
    step_errors: dict[str, Counter[str]] = {}
    failed: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    problems: list[str] = []
    timings: dict[str, HdrHistogram] = {}
    for r in results:
        for name, encoded in r.timings.items():
            hist = timings.setdefault(name, new_histogram())
            if encoded is not None:
                hist.add(HdrHistogram.decode(encoded))
        if r.hdr is not None:
            durations.add(HdrHistogram.decode(r.hdr))
        if r.lag_hdr is not None:
            lags.add(HdrHistogram.decode(r.lag_hdr))
        for name, step in r.steps.items():
            step_requests[name] += step.requests
            step_errors.setdefault(name, Counter()).update(step.errors)
            hist = step_hists.setdefault(name, new_histogram())
            if step.hdr is not None:
                hist.add(HdrHistogram.decode(step.hdr))
        failed.update(r.failed)
        counts.update(r.counts)
        problems.extend(p for p in r.problems if p not in problems)
    completed = sum(r.completed for r in results)
    step_count = sum(r.step_count for r in results)
    cpu_s = sum(r.cpu_s for r in results)
    saturated = any(r.wall_s > 0 and r.cpu_s / r.wall_s >= SATURATED_CPU for r in results)
    late: int | None = None
    rate_held: bool | None = None
    if spec.rate is not None:
        verdict = _OpenModel.of(
            spec,
            waited=sum(r.late_starts for r in results),
            lagging=sum(r.lagging_starts for r in results),
            intended=sum(r.intended_starts for r in results),
            achieved=completed + sum(failed.values()),
        )
        late, rate_held = verdict.late, verdict.rate_held
        if verdict.engine_lagged:
            saturated = True
            problems.insert(
                0, f"the engine started {verdict.lagging} of {verdict.intended} scenarios late"
            )
    steps = [
        StepResult(
            name=name,
            requests=step_requests[name],
            errors=dict(sorted(step_errors[name].items())),
            latency_ms=latency_summary(step_hists[name]),
            hdr=_encoded(step_hists[name]),
        )
        for name in step_hists
    ]
    return ScenarioMeasurement(
        concurrency=spec.concurrency,
        duration_s=spec.duration_s,
        completed=completed,
        failed=dict(sorted(failed.items())),
        per_s=completed / spec.duration_s,
        per_s_slices=_slice_rates([r.slices for r in results], spec.duration_s),
        duration_ms=latency_summary(durations),
        hdr=_encoded(durations),
        steps=steps,
        client_saturated=saturated,
        client_cpu_s_per_step=cpu_s / step_count if step_count else None,
        engine_procs=len(results),
        offered_rps=spec.rate,
        late_starts=late,
        rate_held=rate_held,
        problems=problems[:10],
        counts=dict(sorted(counts.items())),
        lag_ms=latency_summary(lags),
        lag_hdr=_encoded(lags),
        lag_probes=sum(r.lag_probes for r in results) if probed else None,
        lag_unresolved=sum(r.lag_unresolved for r in results) if probed else None,
        timings=[
            Timing(
                name=name,
                count=hist.get_total_count(),
                latency_ms=latency_summary(hist),
                hdr=_encoded(hist),
            )
            for name, hist in timings.items()
        ],
    )


def _encoded(hist: HdrHistogram) -> str | None:
    return hist.encode().decode("ascii") if hist.get_total_count() else None
