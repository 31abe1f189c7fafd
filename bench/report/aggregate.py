"""Collect results from files and folders, merge the repetitions of a cell in a run into one
result (rates averaged, counts summed, histograms added), and the comparisons every report
format shows.

Nothing here formats text for a reader except warning lines and why a repetition was left out;
the formats live in `tables.py` and the renderers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.compare.settings import measurement_fields, measurement_settings
from bench.config.versions import version_key
from bench.core.errors import ResultsError
from bench.report.numbers import first_line
from bench.results import (
    EndpointResult,
    Result,
    ScenarioResult,
    ServerInfo,
    load_result,
)
from bench.results.merge import merge

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


def _merged_endpoint(eps: Sequence[EndpointResult]) -> EndpointResult:
    return merge(eps, "repetitions")


def _merged_scenario(runs: Sequence[ScenarioResult]) -> ScenarioResult:
    return merge(runs, "repetitions")


def _merged_server(infos: Sequence[ServerInfo | None]) -> ServerInfo | None:
    present = [i for i in infos if i is not None]
    return merge(present, "repetitions") if present else None


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


# A series' settings: (name, value) of every measurement setting, then ("machine", machine).
Series = tuple[tuple[str, str], ...]


def series_key(result: Result) -> tuple[str, Series]:
    """(cell name, settings): results with equal keys are one series. The settings are what
    changes the figures: every measurement setting (bench.compare.settings)
    and the machine."""
    settings = measurement_settings(result.config)
    return result.cell.name, (*settings.items(), ("machine", machine(result)))


def comparability_warnings(results: Iterable[Result]) -> list[str]:
    """Warnings when the results that carry measurements are not like-for-like.

    Machines differ when hostname, cpu model or cpu count differ; settings differ when any
    measurement setting does (bench.compare.settings).
    """
    measured = [r for r in results if r.status == "ok" or r.endpoints]
    warnings: list[str] = []
    machines = _distinct(measured, "machines", machine)
    if machines:
        warnings.append(
            f"Results come from different machines: {machines}. "
            "Comparisons across them are not like-for-like."
        )
    settings = {id(r): measurement_settings(r.config) for r in measured}
    differing = [
        found
        for name in measurement_fields()
        if (found := _distinct(measured, name, lambda r, name=name: settings[id(r)][name]))
    ]
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
