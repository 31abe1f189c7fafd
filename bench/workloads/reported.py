"""What a scenario workload adds to the report's Scenarios section, declared as data beside the
workload: tables, each a title and how to read its values from a scenario's result, and notes.
bench/report/scenarios.py draws them (the report imports the workloads, never the reverse), so
the report names no workload and a workload's figures are explained where they are made.

A table is drawn when a shown result's workload declares it and some scenario has a value for
it; its rows cover every scenario shown (a scenario of another workload shows "-")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from bench.results import LatencyMs, ScenarioResult, StepResult, Timing


@dataclass(frozen=True)
class Reading:
    """One value of a table, as data the report formats: a latency's p50 / p99 (ms, its p50
    the value's number), amounts with their units ("1.50 pg xact"), remarks in brackets after
    them ("48 probes"); `bad` marks it as a problem."""

    latency: LatencyMs | None = None
    amounts: tuple[tuple[float, str], ...] = ()
    remarks: tuple[str, ...] = ()
    bad: bool = False


@dataclass(frozen=True)
class LevelTable:
    """A row per scenario and level, a column per cell: `read` gives a cell's value (None:
    nothing to show). `note` goes under the section with the table, `bad_note` too when a
    value is bad."""

    title: str
    read: Callable[[ScenarioResult], Reading | None]
    note: str = ""
    bad_note: str = ""


@dataclass(frozen=True)
class PartsTable:
    """A table per scenario, titled "<scenario>: <title>", right after its step latencies: a
    row per part (`header` names what a part is) and level; `read` gives a scenario's parts by
    name (empty: it has none). `note` goes under the section."""

    title: str
    header: str
    read: Callable[[ScenarioResult], Mapping[str, Reading | None]]
    note: str = ""


@dataclass(frozen=True)
class CountsTable:
    """A row per scenario, level and count read back (a level where no cell read any has no
    rows): `read` gives a scenario's counts by name (None: nothing was read)."""

    title: str
    read: Callable[[ScenarioResult], Mapping[str, int] | None]
    note: str = ""


ScenarioTable = LevelTable | PartsTable | CountsTable


@dataclass(frozen=True)
class ScenarioReport:
    """What a scenario workload's results add to the Scenarios section: `unit`, what one
    completed scenario is as a rate ("events/s"; shown when every result shown says the same),
    its tables (in this order, after those of the workloads declared before it) and notes."""

    unit: str = ""
    tables: tuple[ScenarioTable, ...] = ()
    notes: tuple[str, ...] = ()


# What a scenario has several of by name: its steps, its timings.
Part = TypeVar("Part", StepResult, Timing)


def by_name(
    parts: Iterable[Part], read: Callable[[Part], Reading | None]
) -> dict[str, Reading | None]:
    """`parts` (steps, timings) read by name, in order; the first of a name counts."""
    found: dict[str, Reading | None] = {}
    for part in parts:
        found.setdefault(part.name, read(part))
    return found
