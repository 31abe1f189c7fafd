"""Collect results from files and folders, merge the repetitions of a cell in a run into one
result (rates averaged, counts summed, histograms added), and the comparisons every report
format shows.

Nothing here formats text for a reader except warning lines and why a repetition was left out;
the formats live in `tables.py` and the renderers.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hdrh.histogram import HdrHistogram

from bench.config.versions import version_key
from bench.core.errors import ResultsError
from bench.engine.model import latency_summary
from bench.report.numbers import first_line, fmt_num
from bench.results import (
    Delivery,
    EndpointResult,
    LatencyMs,
    Result,
    ScenarioResult,
    ServerInfo,
    StepResult,
    Timing,
    load_result,
)

REFERENCE_SERVER = "python"


def reference_version(results: Iterable[Result]) -> str:
    """The Prefect version of the results others are compared with: the oldest of a run
    comparing versions (did the newer one regress?), "" where any python result has none."""
    versions = {r.cell.version for r in results if r.cell.server == REFERENCE_SERVER}
    if not versions or "" in versions:
        return ""
    return min(versions, key=version_key)


def is_reference(result: Result, version: str) -> bool:
    """Whether `result` is of the reference server, python (of `version`: reference_version)."""
    return result.cell.server == REFERENCE_SERVER and result.cell.version == version


# report.json, report.md.json, …: written next to results by reports, never results themselves.
REPORT_STEM = "report"


def _is_candidate(path: Path, root: Path) -> bool:
    if any(part.startswith(".") for part in path.relative_to(root).parts):
        return False
    return path.name.split(".", 1)[0] != REPORT_STEM and path.is_file()


def _result_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if _is_candidate(p, root))


def collect(paths: Sequence[Path]) -> tuple[list[Result], list[str]]:
    """Load every result in `paths` (files, or folders searched recursively for *.json).

    In folders, dot-files, files under dot-folders and report files are skipped. Every
    repetition of a cell is kept (`merge_repetitions` makes one result of them). Returns the
    results sorted by (run_id, server, db, broker, repetition) and one warning line per path
    that could not be used (missing, unreadable, invalid, unknown schema version, or a duplicate
    of a result already loaded for the same run, cell and repetition).
    """
    files: list[Path] = []
    warnings: list[str] = []
    for path in paths:
        if path.is_dir():
            files.extend(_result_files(path))
        elif path.exists():
            files.append(path)
        else:
            warnings.append(f"{path}: no such file or directory")

    results: list[Result] = []
    seen_files: set[Path] = set()
    seen_cells: dict[tuple[str, str, int | None], Path] = {}
    for file in files:
        resolved = file.resolve()
        if resolved in seen_files:
            continue
        seen_files.add(resolved)
        try:
            result = load_result(file)
        except ResultsError as exc:
            warnings.append(str(exc))
            continue
        key = (result.run_id, result.cell.name, result.repetition)
        if key in seen_cells:
            repetition = "" if result.repetition is None else f" repetition {result.repetition}"
            warnings.append(
                f"{file}: run {result.run_id} cell {result.cell.name}{repetition} is already "
                f"read from {seen_cells[key]}; ignored"
            )
            continue
        seen_cells[key] = file
        results.append(result)
    results.sort(
        key=lambda r: (r.run_id, r.cell.server, r.cell.db, r.cell.broker, r.repetition or 1)
    )
    return results, warnings


# -- repetitions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repetitions:
    """What the figures of one cell in one run stand on: how many repetitions were counted, and
    the ones left out (repetition number, reason)."""

    counted: int
    discarded: tuple[tuple[int | None, str], ...] = ()
    failed: tuple[tuple[int | None, str], ...] = ()

    @property
    def repeated(self) -> bool:
        return self.counted + len(self.discarded) + len(self.failed) > 1


def _by_run_and_cell(results: Iterable[Result]) -> dict[tuple[str, str], list[Result]]:
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.run_id, r.cell.name), []).append(r)
    for group in groups.values():
        group.sort(key=lambda r: r.repetition or 1)
    return groups


def _counted(group: Sequence[Result]) -> list[Result]:
    return [r for r in group if r.status == "ok" and r.discarded is None]


def repetitions(results: Iterable[Result]) -> dict[tuple[str, str], Repetitions]:
    """For each (run id, cell name): the repetitions its merged figures count and those they
    leave out, discarded (with the reason) or not ok (with the status and error)."""
    found = {}
    for key, group in _by_run_and_cell(results).items():
        found[key] = Repetitions(
            counted=len(_counted(group)),
            discarded=tuple((r.repetition, r.discarded) for r in group if r.discarded is not None),
            failed=tuple(
                (r.repetition, f"{r.status}: {first_line(r.error) or 'no reason recorded'}")
                for r in group
                # A cell that ran once and failed is no repetition left out: it is the cell.
                if r.discarded is None and r.status != "ok" and len(group) > 1
            ),
        )
    return found


def merge_repetitions(results: Iterable[Result]) -> list[Result]:
    """One result per (run, cell): its counted repetitions (ok, not discarded) merged.

    Per endpoint and level: the mean rps over the repetitions that measured it, requests and
    errors summed, latencies from the added histograms (lossless; re-encoded into `hdr`), the
    rps slices of all of them, saturated if any was. Scenarios likewise (per_s the mean, counts,
    delivery and server-side counts summed, durations, steps, lag and timings from added
    histograms). A result that is the only one of its cell and run, or the only counted one, is
    returned as it is. A cell with no counted repetition shows its first failure; one whose
    every repetition was discarded is shown as failed, saying so. Results come back in the order
    of their first repetition.
    """
    merged = []
    for group in _by_run_and_cell(results).values():
        counted = _counted(group)
        kept = [r for r in group if r.discarded is None]
        if len(group) == 1 and kept:
            merged.append(group[0])
        elif len(counted) == 1:
            merged.append(counted[0])
        elif counted:
            merged.append(_merged(counted))
        elif kept:
            merged.append(kept[0])
        else:
            merged.append(
                group[0].model_copy(
                    update={
                        "status": "failed",
                        "error": f"every repetition was discarded: {group[0].discarded}",
                        "endpoints": [],
                        "scenarios": [],
                    }
                )
            )
    return merged


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _max(values: Iterable[float | None]) -> float | None:
    return max((v for v in values if v is not None), default=None)


def _summed(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(sorted(total.items()))


def _concat(slices: Sequence[list[float] | None]) -> list[float] | None:
    # Slices from only some repetitions would weigh those more in every resampled interval.
    if any(s is None for s in slices):
        return None
    return [x for s in slices for x in s or ()]


def _union(problems: Iterable[list[str]]) -> list[str]:
    return list(dict.fromkeys(p for ps in problems for p in ps))[:10]


def _sum_or_none(values: Sequence[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v or 0 for v in values)


def _all_or_none(values: Sequence[bool | None]) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def _weighted(values: Sequence[float | None], weights: Sequence[int]) -> float | None:
    if any(v is None for v in values) or not sum(weights):
        return None
    return sum((v or 0.0) * w for v, w in zip(values, weights, strict=True)) / sum(weights)


def merged_histogram(encoded: Iterable[str | None]) -> HdrHistogram | None:
    """The sum of the encoded HdrHistograms given (None ones skipped); None if there are none."""
    hist = None
    for hdr in encoded:
        if hdr is None:
            continue
        if hist is None:
            hist = HdrHistogram.decode(hdr)
        else:
            hist.add(HdrHistogram.decode(hdr))
    return hist


_Latency = tuple[LatencyMs | None, str | None]


def _latency(parts: Sequence[tuple[LatencyMs | None, str | None, int]]) -> _Latency:
    """The merged latency summary and encoded histogram of (summary, histogram, successes)."""
    measured = [(lat, hdr, n) for lat, hdr, n in parts if lat is not None or hdr is not None]
    if not measured:
        return None, None
    if all(hdr is not None for _, hdr, _ in measured):
        hist = merged_histogram(hdr for _, hdr, _ in measured)
        assert hist is not None
        return latency_summary(hist), hist.encode().decode("ascii")
    # Without every histogram (results written by hand or before histograms were kept) no
    # merge is exact; a mixture's percentiles lie between its parts', so their mean weighted
    # by successes is as close as the summaries allow.
    summaries = [(lat, n) for lat, _, n in measured if lat is not None]
    weights = [max(n, 1) for _, n in summaries]

    def mean_of(field: str) -> float:
        total = sum(getattr(lat, field) * w for (lat, _), w in zip(summaries, weights, strict=True))
        return total / sum(weights)

    fields = ("mean", "p50", "p90", "p99", "p999")
    summary = LatencyMs(
        min=min(lat.min for lat, _ in summaries),
        max=max(lat.max for lat, _ in summaries),
        **{f: mean_of(f) for f in fields},
    )
    return summary, None


def _merged_endpoint(eps: Sequence[EndpointResult]) -> EndpointResult:
    latency, hdr = _latency([(e.latency_ms, e.hdr, e.successes) for e in eps])
    return eps[0].model_copy(
        update={
            "requests": sum(e.requests for e in eps),
            "errors": _summed(e.errors for e in eps),
            "duration_s": sum(e.duration_s for e in eps),
            "rps": statistics.fmean(e.rps for e in eps),
            "rps_slices": _concat([e.rps_slices for e in eps]),
            "latency_ms": latency,
            "hdr": hdr,
            "client_saturated": any(e.client_saturated for e in eps),
            "problems": _union(e.problems for e in eps),
            "client_cpu_s_per_request": _weighted(
                [e.client_cpu_s_per_request for e in eps], [e.requests for e in eps]
            ),
            "late_sends": _sum_or_none([e.late_sends for e in eps]),
            "rate_held": _all_or_none([e.rate_held for e in eps]),
            "server_cpu_cores": _mean(e.server_cpu_cores for e in eps),
            "server_rss_peak_mb": _max(e.server_rss_peak_mb for e in eps),
            # Deltas of one window each: the report shows none, and a sum over the windows of
            # different server processes would say little.
            "telemetry": None,
        }
    )


def _merged_step(steps: Sequence[StepResult]) -> StepResult:
    successes = [s.requests - sum(s.errors.values()) for s in steps]
    latency, hdr = _latency(
        [(s.latency_ms, s.hdr, n) for s, n in zip(steps, successes, strict=True)]
    )
    return steps[0].model_copy(
        update={
            "requests": sum(s.requests for s in steps),
            "errors": _summed(s.errors for s in steps),
            "latency_ms": latency,
            "hdr": hdr,
        }
    )


def _merged_delivery(deliveries: Sequence[dict[str, Delivery]]) -> dict[str, Delivery]:
    kinds = dict.fromkeys(kind for d in deliveries for kind in d)
    return {
        kind: Delivery(
            sent=sum(d[kind].sent for d in deliveries if kind in d),
            recorded=sum(d[kind].recorded for d in deliveries if kind in d),
            lost=sum(d[kind].lost for d in deliveries if kind in d),
        )
        for kind in kinds
    }


def _merged_timing(timings: Sequence[Timing]) -> Timing:
    latency, hdr = _latency([(t.latency_ms, t.hdr, t.count) for t in timings])
    return timings[0].model_copy(
        update={"count": sum(t.count for t in timings), "latency_ms": latency, "hdr": hdr}
    )


def _merged_server_side(sides: Sequence[dict[str, int] | None]) -> dict[str, int] | None:
    """The server-side counts summed key by key over the runs that read them (a key a run
    lacks counts 0 there, as a delivery kind does); None if no run did."""
    present = [side for side in sides if side is not None]
    if not present:
        return None
    keys = dict.fromkeys(k for side in present for k in side)
    return {k: sum(side.get(k, 0) for side in present) for k in keys}


def _merged_scenario(runs: Sequence[ScenarioResult]) -> ScenarioResult:
    duration_ms, hdr = _latency([(s.duration_ms, s.hdr, s.completed) for s in runs])
    lag_ms, lag_hdr = _latency([(s.lag_ms, s.lag_hdr, s.lag_probes or 0) for s in runs])
    step_names = dict.fromkeys(step.name for s in runs for step in s.steps)
    steps = [
        _merged_step([step for s in runs for step in s.steps if step.name == name])
        for name in step_names
    ]
    timing_names = dict.fromkeys(t.name for s in runs for t in s.timings)
    timings = [
        _merged_timing([t for s in runs for t in s.timings if t.name == name])
        for name in timing_names
    ]
    backend_keys = dict.fromkeys(k for s in runs for k in s.backend_per_flow_run or {})
    backend = {k: _mean((s.backend_per_flow_run or {}).get(k) for s in runs) for k in backend_keys}
    probed = [s.lag_probes for s in runs]
    return runs[0].model_copy(
        update={
            "duration_s": sum(s.duration_s for s in runs),
            "completed": sum(s.completed for s in runs),
            "failed": _summed(s.failed for s in runs),
            "per_s": statistics.fmean(s.per_s for s in runs),
            "per_s_slices": _concat([s.per_s_slices for s in runs]),
            "duration_ms": duration_ms,
            "hdr": hdr,
            "steps": steps,
            "client_saturated": any(s.client_saturated for s in runs),
            "client_cpu_s_per_step": _mean(s.client_cpu_s_per_step for s in runs),
            "late_starts": _sum_or_none([s.late_starts for s in runs]),
            "rate_held": _all_or_none([s.rate_held for s in runs]),
            "problems": _union(s.problems for s in runs),
            "counts": _summed(s.counts for s in runs),
            "lag_ms": lag_ms,
            "lag_hdr": lag_hdr,
            "lag_probes": None if all(p is None for p in probed) else sum(p or 0 for p in probed),
            "lag_unresolved": _sum_or_none([s.lag_unresolved for s in runs]),
            "delivery": _merged_delivery([s.delivery for s in runs]),
            "server_cpu_cores": _mean(s.server_cpu_cores for s in runs),
            "server_rss_peak_mb": _max(s.server_rss_peak_mb for s in runs),
            "telemetry": None,  # as an endpoint's: what it says is in backend_per_flow_run
            "backend_per_flow_run": backend or None,
            "timings": timings,
            "server_side": _merged_server_side([s.server_side for s in runs]),
        }
    )


def _merged_server(infos: Sequence[ServerInfo | None]) -> ServerInfo | None:
    present = [i for i in infos if i is not None]
    if not present:
        return None
    return present[0].model_copy(
        update={
            "startup_s": _mean(i.startup_s for i in present),
            "rss_peak_mb": _max(i.rss_peak_mb for i in present),
            "rss_idle_mb": _mean(i.rss_idle_mb for i in present),
            "cpu_s": _mean(i.cpu_s for i in present),
        }
    )


def _merged(counted: Sequence[Result]) -> Result:
    endpoints: dict[tuple[str, int], list[EndpointResult]] = {}
    for r in counted:
        for key, ep in measurements(r).items():
            endpoints.setdefault(key, []).append(ep)
    scenarios: dict[tuple[str, int], list[ScenarioResult]] = {}
    for r in counted:
        for key, sc in scenario_measurements(r).items():
            scenarios.setdefault(key, []).append(sc)
    finished = [r.finished_at for r in counted if r.finished_at]
    return counted[0].model_copy(
        update={
            "started_at": min(r.started_at for r in counted),
            "finished_at": max(finished) if finished else None,
            "server": _merged_server([r.server for r in counted]),
            "endpoints": [_merged_endpoint(eps) for eps in endpoints.values()],
            "scenarios": [_merged_scenario(scs) for scs in scenarios.values()],
            "repetition": None,
            # The last repetition's state says why the repetitions stopped.
            "repeat": counted[-1].repeat,
        }
    )


def display_order(results: Iterable[Result], brokers_together: bool = False) -> list[Result]:
    """Results as reports show them: by run, then db and broker, the reference server first;
    `brokers_together`: by run, db, server, then broker (one server's brokers side by side)."""

    def key(r: Result) -> tuple[object, ...]:
        server = (r.cell.server != REFERENCE_SERVER, r.cell.server, version_key(r.cell.version))
        if brokers_together:
            return (r.run_id, r.cell.db, *server, r.cell.broker)
        return (r.run_id, r.cell.db, r.cell.broker, *server)

    return sorted(results, key=key)


def run_ids(results: Iterable[Result]) -> list[str]:
    return sorted({r.run_id for r in results})


def measurements(result: Result) -> dict[tuple[str, int], EndpointResult]:
    """The result's endpoint measurements by (endpoint name, concurrency); the first one wins."""
    found: dict[tuple[str, int], EndpointResult] = {}
    for ep in result.endpoints:
        found.setdefault((ep.name, ep.concurrency), ep)
    return found


def scenario_measurements(result: Result) -> dict[tuple[str, int], ScenarioResult]:
    """The result's scenario measurements by (scenario name, concurrency); the first one wins."""
    found: dict[tuple[str, int], ScenarioResult] = {}
    for s in result.scenarios:
        found.setdefault((s.name, s.concurrency), s)
    return found


def endpoint_keys(results: Iterable[Result]) -> list[tuple[str, int]]:
    """Every (endpoint, concurrency) measured: endpoints in workload order, concurrency rising."""
    names: dict[str, None] = {}
    levels: dict[str, set[int]] = {}
    for result in results:
        for ep in result.endpoints:
            names.setdefault(ep.name, None)
            levels.setdefault(ep.name, set()).add(ep.concurrency)
    return [(name, c) for name in names for c in sorted(levels[name])]


def concurrency_levels(results: Iterable[Result]) -> list[int]:
    return sorted({ep.concurrency for r in results for ep in r.endpoints})


@dataclass(frozen=True)
class Total:
    """Successful requests per second summed over endpoints at one concurrency level."""

    rps: float
    saturated: bool


def total_rps(result: Result, concurrency: int) -> Total | None:
    """Sum of endpoint rps at `concurrency`; None if none measured."""
    eps = [ep for ep in measurements(result).values() if ep.concurrency == concurrency]
    if not eps:
        return None
    return Total(sum(ep.rps for ep in eps), any(ep.client_saturated for ep in eps))


def machine(result: Result) -> str:
    """The machine a result was measured on, as reports name it: host (cpu model, cpus)."""
    env = result.environment
    return f"{env.hostname or '?'} ({env.cpu_model}, {env.cpu_count} cpus)"


@dataclass(frozen=True)
class Pair:
    """A non-reference result and the reference (`python`) result it is compared with."""

    other: Result
    base: Result

    @property
    def same_run(self) -> bool:
        return self.other.run_id == self.base.run_id

    @property
    def same_machine(self) -> bool:
        return machine(self.other) == machine(self.base)


def speedup_pairs(results: Iterable[Result]) -> list[Pair]:
    """Pair each ok result of another server (or of a newer Prefect version: reference_version)
    with an ok python result of the same db and broker.

    A python result of the same machine is preferred (a speedup across machines is not the
    servers' alone), then one of the same run, then the newest one (by started_at).
    """
    ok = display_order(r for r in results if r.status == "ok")
    version = reference_version(ok)
    refs = [r for r in ok if is_reference(r, version)]
    pairs: list[Pair] = []
    for other in ok:
        if is_reference(other, version):
            continue
        same_cell = [
            b for b in refs if (b.cell.db, b.cell.broker) == (other.cell.db, other.cell.broker)
        ]
        if not same_cell:
            continue
        here = [b for b in same_cell if machine(b) == machine(other)] or same_cell
        same_run = [b for b in here if b.run_id == other.run_id]
        base = same_run[0] if same_run else max(here, key=lambda b: (b.started_at, b.run_id))
        pairs.append(Pair(other, base))
    return pairs


def _distinct(results: Sequence[Result], what: str, key: Callable[[Result], str]) -> str | None:
    counts = Counter(key(r) for r in results)
    if len(counts) < 2:
        return None
    values = " vs ".join(
        f"{value} ({n} result{'' if n == 1 else 's'})" for value, n in sorted(counts.items())
    )
    return f"{what} {values}"


def series_key(result: Result) -> tuple[str, str]:
    """(cell name, settings): results with equal keys are one series. The settings are what
    changes the figures: the workload and its load, the pinning, and the machine."""
    c = result.config
    load = f"{c.mode} {fmt_num(c.rate)}/s" if c.mode == "open" else c.mode
    settings = [
        c.workload,
        load,
        f"{c.duration_s:g} s (+{c.warmup_s:g} s warmup)",
        "c=" + ",".join(map(str, c.concurrency)),
    ]
    if c.workload == "flow-runs":
        settings.append(f"{c.tasks} tasks")
    if c.engine_procs is not None:
        settings.append(f"{c.engine_procs} engine procs")
    if c.server_cpus is not None or c.client_cpus is not None:
        settings.append(f"cpus server {c.server_cpus} client {c.client_cpus}")
    if c.no_services:
        settings.append("no services")
    if c.preload:
        shape = f", {c.preload_shape}" if c.preload_shape else ""
        settings.append(f"preload {c.preload:,} flow runs{shape}")
    settings.append(f"on {machine(result)}")
    return result.cell.name, ", ".join(settings)


def comparability_warnings(results: Iterable[Result]) -> list[str]:
    """Warnings when the results that carry measurements are not like-for-like.

    Machines differ when hostname, cpu model or cpu count differ; settings differ when the
    workload, load mode, measurement duration, concurrency levels or preload differ.
    """
    measured = [r for r in results if r.status == "ok" or r.endpoints]
    warnings: list[str] = []
    machines = _distinct(measured, "machines", machine)
    if machines:
        warnings.append(
            f"Results come from different machines: {machines}. "
            "Comparisons across them are not like-for-like."
        )
    settings = [
        _distinct(measured, "workload", lambda r: r.config.workload),
        _distinct(measured, "mode", lambda r: r.config.mode),
        _distinct(measured, "duration_s", lambda r: f"{r.config.duration_s:g}"),
        _distinct(
            measured, "concurrency", lambda r: ",".join(str(c) for c in r.config.concurrency)
        ),
        _distinct(measured, "preload", lambda r: f"{r.config.preload or 0}"),
    ]
    differing = [s for s in settings if s]
    if differing:
        warnings.append(
            f"Results use different settings: {'; '.join(differing)}. "
            "Comparisons across them are not like-for-like."
        )
    return warnings


def _cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


NOISY_SHOWN = 5


def noisy_warnings(results: Iterable[Result]) -> list[str]:
    """A warning per result measured on a noisy machine, with its first reason (the first
    NOISY_SHOWN of them, then how many more)."""
    noisy = [r for r in results if r.noisy]
    lines = [
        f"{r.run_id} {r.cell.name}"
        + (f" repetition {r.repetition}" if r.repetition else "")
        + f" was measured on a noisy machine: {r.noise[0] if r.noise else 'no reason recorded'}"
        for r in noisy[:NOISY_SHOWN]
    ]
    if len(noisy) > NOISY_SHOWN:
        lines.append(f"... and {len(noisy) - NOISY_SHOWN} more results measured on a noisy machine")
    return lines


def shared_cpu_warnings(results: Iterable[Result]) -> list[str]:
    """A warning when results were measured with the server and the client pinned to CPU sets
    that overlap (config.server_cpus and config.client_cpus both set and intersecting).

    Unpinned results are not flagged: the scheduler may or may not have put both on one core.
    """
    measured = [r for r in results if r.status == "ok" or r.endpoints]
    multi_run = len({r.run_id for r in measured}) > 1
    shared: list[str] = []
    for r in measured:
        server, client = r.config.server_cpus, r.config.client_cpus
        common = set(server or ()) & set(client or ())
        if common:
            where = f"{r.cell.name} ({r.run_id})" if multi_run else r.cell.name
            shared.append(
                f"{where}: server on CPUs {_cpu_list(server or ())}, client on CPUs "
                f"{_cpu_list(client or ())}"
            )
    if not shared:
        return []
    return [
        "The server and the load generator shared CPUs in "
        + "; ".join(shared)
        + ". They competed for those cores: the rates are lower and the latencies higher than "
        "the server would show on cores of its own."
    ]
