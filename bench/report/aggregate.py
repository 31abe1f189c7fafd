"""Collect results from files and folders, and the comparisons every report format shows.

Nothing here formats text for a reader except warning lines; the formats live in `tables.py`
and the renderers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.errors import ResultsError
from bench.results import EndpointResult, Result, load_result

REFERENCE_SERVER = "python"

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

    In folders, dot-files, files under dot-folders and report files are skipped. Returns the
    results sorted by (run_id, server, db, broker) and one warning line per path that could not
    be used (missing, unreadable, invalid, unknown schema version, or a duplicate of a result
    already loaded for the same run and cell).
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
    seen_cells: dict[tuple[str, str], Path] = {}
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
        key = (result.run_id, result.cell.name)
        if key in seen_cells:
            warnings.append(
                f"{file}: run {result.run_id} cell {result.cell.name} is already read from "
                f"{seen_cells[key]}; ignored"
            )
            continue
        seen_cells[key] = file
        results.append(result)
    results.sort(key=lambda r: (r.run_id, r.cell.server, r.cell.db, r.cell.broker))
    return results, warnings


def display_order(results: Iterable[Result], brokers_together: bool = False) -> list[Result]:
    """Results as reports show them: by run, then db and broker, the reference server first;
    `brokers_together`: by run, db, server, then broker (one server's brokers side by side)."""

    def key(r: Result) -> tuple[object, ...]:
        server = (r.cell.server != REFERENCE_SERVER, r.cell.server)
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


@dataclass(frozen=True)
class Pair:
    """A non-reference result and the reference (`python`) result it is compared with."""

    other: Result
    base: Result

    @property
    def same_run(self) -> bool:
        return self.other.run_id == self.base.run_id


def speedup_pairs(results: Iterable[Result]) -> list[Pair]:
    """Pair each ok non-python result with an ok python result of the same db and broker.

    The python result of the same run is preferred; otherwise the newest one (by started_at).
    """
    ok = display_order(r for r in results if r.status == "ok")
    refs = [r for r in ok if r.cell.server == REFERENCE_SERVER]
    pairs: list[Pair] = []
    for other in ok:
        if other.cell.server == REFERENCE_SERVER:
            continue
        same_cell = [
            b for b in refs if (b.cell.db, b.cell.broker) == (other.cell.db, other.cell.broker)
        ]
        if not same_cell:
            continue
        same_run = [b for b in same_cell if b.run_id == other.run_id]
        base = same_run[0] if same_run else max(same_cell, key=lambda b: (b.started_at, b.run_id))
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


def comparability_warnings(results: Iterable[Result]) -> list[str]:
    """Warnings when the results that carry measurements are not like-for-like.

    Machines differ when hostname, cpu model or cpu count differ; settings differ when the
    workload, load mode, measurement duration or concurrency levels differ.
    """
    measured = [r for r in results if r.status == "ok" or r.endpoints]
    warnings: list[str] = []
    machines = _distinct(
        measured,
        "machines",
        lambda r: (
            f"{r.environment.hostname or '?'} / {r.environment.cpu_model} "
            f"/ {r.environment.cpu_count} cpus"
        ),
    )
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
