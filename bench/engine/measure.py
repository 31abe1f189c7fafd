"""measure(): split a load spec over engine processes, run them, merge what they counted."""

from __future__ import annotations

import math
import os
import pickle
import secrets
import warnings
from collections.abc import Callable, Sequence
from time import monotonic_ns

from hdrh.histogram import HdrHistogram

from bench.engine.model import EngineRequest, LoadSpec, Target, latency_summary, new_histogram
from bench.engine.pool import get_pool
from bench.engine.worker import Job, ShareResult
from bench.errors import ConfigError
from bench.results import Measurement

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


def _check(request: EngineRequest, spec: LoadSpec) -> None:
    try:
        pickle.dumps(request)
    except Exception as exc:
        raise ConfigError(
            f"the request must be picklable (validate: a module-level function): {exc}"
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
    n = choose_procs(spec)
    conns = _split(spec.concurrency, n)
    pool = get_pool()
    pool.ensure(n)  # the first call spawns the processes: do it before the clock starts
    nonce = secrets.token_hex(4)
    start = monotonic_ns() + int(START_DELAY_S * 1e9)
    w_start = start + int(spec.warmup_s * 1e9)
    w_end = w_start + int(spec.duration_s * 1e9)
    jobs = []
    for i in range(n):
        rate = None
        offset = 0
        if spec.rate is not None:
            rate = spec.rate / n
            offset = int(i * 1e9 / spec.rate)  # interleave the processes' schedules
        jobs.append(
            Job(
                target=target,
                request=request,
                spec=spec,
                connections=conns[i],
                rate=rate,
                start_ns=start + offset,
                window_start_ns=w_start,
                window_end_ns=w_end,
                token_prefix=f"{nonce}-{i}-".encode(),
            )
        )
    give_up = w_end + int(REPORT_GRACE_S * 1e9)
    cpus = _cpu_sets(spec.client_cpus, n)
    results = pool.run(jobs, cpus, progress, lambda: monotonic_ns() > give_up)
    return merge(results, spec)


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
        lagging = sum(r.lagging_sends for r in results)
        late = sum(r.late_sends for r in results) + lagging
        intended = max(sum(r.intended_sends for r in results), 1)
        achieved = requests / spec.duration_s
        rate_held = achieved >= RATE_SHORTFALL * spec.rate and late <= LATE_SHARE * intended
        if lagging > LATE_SHARE * intended:
            saturated = True
            problems.insert(
                0,
                f"the engine sent {lagging} of {intended} requests late with a connection free:"
                " it could not hold the rate (more --engine-procs or another --client-cpus)",
            )
    return Measurement(
        concurrency=spec.concurrency,
        requests=requests,
        errors=dict(sorted(errors.items())),
        duration_s=spec.duration_s,
        rps=(requests - sum(errors.values())) / spec.duration_s,
        rps_slices=_slice_rps(results, spec.duration_s),
        latency_ms=latency_summary(hist),
        client_saturated=saturated,
        hdr=hist.encode().decode("ascii") if hist.get_total_count() else None,
        problems=problems[:10],
        client_cpu_s_per_request=cpu_s / requests if requests else None,
        engine_procs=len(results),
        offered_rps=spec.rate,
        late_sends=late,
        rate_held=rate_held,
    )


def _slice_rps(results: Sequence[ShareResult], duration_s: float) -> list[float] | None:
    """The processes' slice counts added up, as rates (every process cuts the same window)."""
    per_process: list[list[int]] = []
    for r in results:
        if r.slices is None or (per_process and len(r.slices) != len(per_process[0])):
            return None
        per_process.append(r.slices)
    if not per_process:
        return None
    totals = [sum(column) for column in zip(*per_process, strict=True)]
    return [n * len(totals) / duration_s for n in totals]
