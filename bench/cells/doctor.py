"""What this machine can run, asked before running it (`prefect-bench doctor`, `matrix
--dry-run`): each cell's fate decided as its own run decides it (`runner.skip_reason`, then a
provider for each backing service), without starting, building or provisioning anything; the
tools each option needs; the Prefect versions the nox sessions would install (asked of the
package index); and the time the cells that can run would take.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench import cost
from bench.cells.runner import CellRun, needed_services, skip_reason
from bench.config.run import RunConfig
from bench.config.versions import (
    VERSION_ENV,
    index_url,
    parse_versions,
    release_files,
    released_at,
)
from bench.core.cache_folder import default_cache_dir
from bench.core.errors import CellSkipped, ConfigError
from bench.profile import perf, pyspy
from bench.workloads import ScenarioWorkload, get_workload

# What a cell spends beside its windows: its server's start, fixtures and the verification of
# every request (a python × sqlite cell at --duration 2 --concurrency 1,4 here: 53 s, of which
# 36 s were windows).
CELL_OVERHEAD_S = 17.0
# Free space below which a --preload's cache is likely to run short (a 100,000-run SQLite
# database is about 1 GB; docs/design-notes.md, --preload).
LOW_DISK_GB = 2.0


@dataclass(frozen=True)
class Outlook:
    """One cell as this machine would run it: why it would be skipped, or which provider
    gives each of its backing services."""

    cell: str
    reason: str | None
    providers: dict[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return self.reason is None


def outlook(run: CellRun) -> Outlook:
    """`run`'s fate here, asked of the same checks its run makes before it starts anything."""
    from bench import services  # the providers: only for cells with backing services

    assert run.server is not None
    if reason := skip_reason(run, run.server):
        return Outlook(run.cell.name, reason)
    providers = {}
    for kind in needed_services(run.cell):
        try:
            providers[kind] = services.choose(kind, run.config.provider).name
        except CellSkipped as exc:
            return Outlook(run.cell.name, str(exc))
    return Outlook(run.cell.name, None, providers)


def estimate_s(config: RunConfig, cells: int) -> tuple[float | None, list[str]]:
    """How long `cells` cells of `config` would take (None when it cannot be told), and what
    the figure leaves out."""
    if config.cost:
        return None, ["--cost cells are not estimated (3–11 minutes a cell measured here)"]
    workload = get_workload(config.workload)
    window = config.warmup_s + config.duration_s
    levels = len(config.concurrency)
    if config.soak_s is not None:
        per_cell = config.soak_s
    elif isinstance(workload, ScenarioWorkload):
        per_cell = levels * window
    else:
        rates = len(config.sweep) if config.sweep else 1
        per_cell = len(workload.endpoints) * levels * rates * window
    left_out = []
    if config.sweep:
        left_out.append("a --rate-sweep stops at each endpoint's knee: this is every rate")
    if config.preload:
        left_out.append("the first seeding of a --preload (later cells restore it from a cache)")
    if config.repeat == "auto":
        left_out.append(
            f"--repeat auto: one repetition each, and at most --budget {config.budget_min:g} min"
        )
    repetitions = 1
    if isinstance(config.repeat, int):
        repetitions = config.repeat + config.warmup_repetition
    return cells * repetitions * (per_cell + CELL_OVERHEAD_S), left_out


def tools() -> list[tuple[str, str, str]]:
    """What the options need beside Python: each tool, what this machine has of it, and what
    needs it."""
    found = []
    for package, needs in (("prefect", "the python servers"), ("prefect-redis", "redis cells")):
        try:
            have = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            have = "missing (nox sessions install it)"
        found.append((package, have, needs))
    found.append(("valgrind, vgdb", cost.missing_tools() or "ok", "--cost"))
    py_spy = pyspy.executable()
    found.append(("py-spy", py_spy or "missing (pip install py-spy)", "--profile of python"))
    found.append(("perf", perf.executable() or "missing (apt-get install linux-perf)",
                  "--profile of a native server"))  # fmt: skip
    folder = default_cache_dir()
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    free_gb = shutil.disk_usage(existing).free / 1e9
    low = (
        f" (under {LOW_DISK_GB:g} GB: a large --preload may not fit)"
        if free_gb < LOW_DISK_GB
        else ""
    )
    found.append(("free disk", f"{free_gb:.1f} GB in {existing}{low}", "--preload's cache"))
    return found


def backing_services() -> list[tuple[str, str, str]]:
    """For PostgreSQL and Redis, each provider in the order of automatic choice: ok, or why
    it cannot provide it here."""
    from bench import services

    return [
        (kind, name, services.PROVIDERS[name].unavailable_reason(kind) or "ok")
        for kind in ("postgres", "redis")
        for name in services.AUTO_ORDER
    ]


def prefect_versions(text: str | None) -> list[tuple[str, str, str]]:
    """The Prefect versions `PREFECT_VERSION` names (`text`; the default when unset): each
    with when the package index released it, or why the nox sessions could not install it."""
    index = index_url()
    try:
        versions = parse_versions(text)
        files = release_files(index)
    except ConfigError as exc:
        return [(VERSION_ENV, "unusable", str(exc))]
    found = []
    for version in versions:
        released = released_at(files, version)
        found.append(
            (version, "on the index", f"released {released:%Y-%m-%d}")
            if released
            else (version, "not on the index", f"no file of prefect {version} on {index}")
        )
    return found


def render(
    console: Console, outlooks: Sequence[Outlook], config: RunConfig, show_tools: bool
) -> None:
    """The cells' table, the estimate, and (`show_tools`) the tools and providers."""
    table = Table(title="Cells", title_justify="left")
    for column in ("cell", "runs here", "how / why not"):
        table.add_column(column, overflow="fold")
    for o in outlooks:
        how = ", ".join(f"{k} from {v}" for k, v in o.providers.items()) or "no backing service"
        table.add_row(
            *map(Text, (o.cell, "yes" if o.runs else "skipped", how if o.runs else o.reason or ""))
        )
    console.print(table)
    running = sum(o.runs for o in outlooks)
    seconds, left_out = estimate_s(config, running)
    line = f"{running} of {len(outlooks)} cells can run here"
    if seconds is not None and running:
        line += f": about {_duration(seconds)} with these options"
    console.print(line, markup=False, highlight=False)
    for note in left_out:
        console.print(f"  not counted: {note}", markup=False, highlight=False)
    if not show_tools:
        return
    versions = prefect_versions(os.environ.get(VERSION_ENV))
    for title, rows, columns in (
        ("Tools", tools(), ("tool", "here", "needed by")),
        ("PostgreSQL and Redis", backing_services(), ("service", "provider", "here")),
        (f"Prefect versions ({VERSION_ENV}, for nox)", versions, ("version", "index", "detail")),
    ):
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*map(Text, row))  # reasons hold brackets: [/db] is no markup
        console.print(table)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} minutes" if minutes >= 2 else f"{seconds:.0f} s"


def default_cell_runs(outlooks: Sequence[Outlook], default: str) -> bool:
    """Whether the embedded default cell is among `outlooks` and can run."""
    return any(o.cell == default and o.runs for o in outlooks)
